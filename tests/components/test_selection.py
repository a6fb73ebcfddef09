"""The selection rule: the best mean replaces the incumbent only when its paired advantage
over the units is significant; how often a bootstrap over the units would choose again."""

import numpy as np
import pytest

from components.selection import best_mean_rate, choose, one_sided_p, reselection_rate


def test_a_small_advantage_on_few_units_keeps_the_incumbent() -> None:
    incumbent = np.array([0.980, 0.982, 0.978, 0.984, 0.980])
    noisy = incumbent + np.array([0.004, -0.002, 0.004, -0.002, 0.002])  # +0.12 points
    choice = choose({"config": incumbent, "other": noisy}, "config")
    assert choice.best == "other" and choice.chosen == "config"
    assert choice.comparisons["other"].p_value >= 0.05
    assert choice.comparisons["other"].difference.n == 5


def test_a_consistent_advantage_replaces_the_incumbent() -> None:
    incumbent = np.array([0.980, 0.982, 0.978, 0.984, 0.980, 0.979])
    better = incumbent + np.array([0.006, 0.004, 0.008, 0.006, 0.004, 0.006])
    choice = choose({"config": incumbent, "better": better}, "config")
    assert choice.chosen == "better"
    assert choice.comparisons["better"].difference.estimate == pytest.approx(0.0056667, abs=1e-6)
    rates = reselection_rate({"config": incumbent, "better": better}, "config", resamples=500)
    assert sum(rates.values()) == pytest.approx(1) and rates["better"] > 0.9


def test_one_sided_p_and_the_best_mean_rate() -> None:
    assert one_sided_p(np.array([0.01])) == 1.0  # one unit: no evidence
    assert one_sided_p(np.array([0.01, 0.01])) == 0.0  # no spread, all above zero
    assert one_sided_p(np.array([-0.01, 0.01, -0.02, 0.02])) == pytest.approx(0.5)
    rates = best_mean_rate({"a": np.array([1.0, 1.0, 1.0]), "b": np.array([0.0, 0.0, 0.0])})
    assert rates == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="different units"):
        choose({"config": np.zeros(3), "x": np.zeros(4)}, "config")
