"""Golden values, computed by hand.

Wilson, 490 of 500, z = 1.959964 (z^2 = 3.841459):
  centre = (0.98 + z^2 / 1000) / (1 + z^2 / 500) = 0.9838415 / 1.0076829 = 0.976340
  half   = z / 1.0076829 * sqrt(0.98 * 0.02 / 500 + z^2 / (4 * 500^2))
         = 1.945022 * sqrt(0.0000392 + 0.0000038415) = 1.945022 * 0.0065606 = 0.012761
  interval [0.963579, 0.989101]
Wilson, 0 of 10: centre = half = (z^2 / 20) / (1 + z^2 / 10) = 0.192073 / 1.384146 = 0.138767
  (with p = 0 the square root is z / 20 = 0.0979982, times z / 1.384146 = 0.138767),
  interval [0, 0.277533].
Exact McNemar: b = 0, c = 5: 2 * (1 / 32) = 0.0625; b = 1, c = 9: 2 * (1 + 10) / 1024 =
  0.021484375; b = c = 3: 2 * 42 / 64 > 1, so 1.
Mean of [0.01, 0.03] (two seeds): 0.02, sd = 0.0141421, t(0.975, 1) = 12.706205, half-width
  12.706205 * 0.0141421 / sqrt(2) = 0.127062: interval [-0.107062, 0.147062].
Paired difference, 2,000 examples, B right on 20 that A gets wrong and both alike elsewhere:
  d = -20 / 2000 = -0.01; its standard error ~ sqrt(20) / 2000 = 0.002236, so a 95%
  interval of about [-0.0144, -0.0056].
"""

import numpy as np
import pytest

from components.stats import (
    format_accuracy,
    mcnemar_exact,
    mean_interval,
    paired_difference,
    ratio_of_medians,
    tango_interval,
    tango_statistic,
    two_sided_z,
    wilson,
)


def test_wilson_golden_values() -> None:
    assert wilson(490, 500) == pytest.approx((0.963579, 0.989101), abs=2e-6)
    assert wilson(0, 10) == pytest.approx((0.0, 0.277533), abs=2e-6)
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 0) == (0.0, 1.0)
    assert format_accuracy(0.98, 500) == "0.9800 [0.9636, 0.9891]"


def test_exact_mcnemar_golden_values() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375)
    assert mcnemar_exact(9, 1) == pytest.approx(0.021484375)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_identical_models_differ_by_zero_within_the_score_interval() -> None:
    rng = np.random.default_rng(1)
    correct = rng.random(500) < 0.97
    same = paired_difference(correct, correct)
    assert same.estimate == 0.0 and same.p_value == 1.0 and (same.only_a, same.only_b) == (0, 0)
    # no disagreement is still evidence of a finite size: at b = c = 0 the bounds are
    # +-z^2 / (n + z^2), not a point
    z2 = two_sided_z(0.95) ** 2
    assert same.interval == pytest.approx((-z2 / (500 + z2), z2 / (500 + z2)), abs=1e-8)


def test_tango_interval_golden_values_and_its_defining_equation() -> None:
    # Fagerland, Lydersen and Laake, Statistical Analysis of Contingency Tables (2017),
    # chapter 8: Bentur et al. (2009), b = 1, c = 7 of 21 pairs: Tango -0.5172 to -0.0260
    assert tango_interval(1, 7, 21) == pytest.approx((-0.5172, -0.0260), abs=1e-4)
    for b, c, n in [(1, 7, 21), (40, 20, 160), (0, 1, 1000), (3, 0, 500)]:
        lo, hi = tango_interval(b, c, n)
        assert lo < (b - c) / n < hi
        assert float(tango_statistic(lo, b, c, n)) == pytest.approx(two_sided_z(0.95), abs=1e-6)
        assert float(tango_statistic(hi, b, c, n)) == pytest.approx(-two_sided_z(0.95), abs=1e-6)
    # one disagreement in 1,000 is not a point: the bound reaches below -0.5 points
    assert tango_interval(0, 1, 1000)[0] < -0.005


def test_one_point_worse_on_2000_examples_is_clearly_worse() -> None:
    champion = np.ones(2000, bool)
    champion[:40] = False  # 98.0%
    challenger = champion.copy()
    challenger[40:60] = False  # 97.0%: wrong on 20 more, right on none the other misses
    worse = paired_difference(challenger, champion)
    assert worse.estimate == pytest.approx(-0.01) and (worse.only_a, worse.only_b) == (0, 20)
    assert worse.interval == pytest.approx((-0.015396, -0.006483), abs=1e-6)
    assert worse.p_value == pytest.approx(2 / 2**20)


def test_ratio_of_medians() -> None:
    rounds = np.array([1.0, 1.1, 0.9, 1.05, 0.95])
    assert ratio_of_medians(rounds, rounds).interval == (1.0, 1.0)
    doubled = ratio_of_medians(2 * rounds, rounds)
    assert doubled.estimate == 2.0 and doubled.interval == (2.0, 2.0)
    with pytest.raises(ValueError, match="positive"):
        ratio_of_medians(rounds, np.zeros(5))


def test_mean_interval_golden_values() -> None:
    two = mean_interval([0.01, 0.03])
    assert two.estimate == pytest.approx(0.02)
    assert two.interval == pytest.approx((-0.107062, 0.147062), abs=1e-6)
    assert mean_interval([0.5]).interval == (0.5, 0.5)
