"""The statistics behind every decision and every accuracy printed.

- ``wilson``: the Wilson score interval of a proportion (Wilson 1927), which unlike the normal
  approximation stays inside [0, 1] and keeps its coverage near 0 and 1, where accuracies of
  good models live.
- ``mcnemar_exact``: the exact McNemar test of two classifiers on the same examples: under
  equal accuracy, each of the ``b + c`` examples on which exactly one of them is right is a
  fair coin, so the two-sided p-value is ``min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))``.
- ``paired_difference``: accuracy of A minus accuracy of B on the same examples, with Tango's
  score interval for a difference of paired proportions (Tango 1998; ``tango_statistic``).
  A percentile bootstrap over examples is too narrow where it matters: when the two models
  disagree on a handful of examples it collapses towards a point (one disagreement in 1,000
  gives [-0.3, 0] points), and a non-inferiority test built on it promotes a challenger
  that sits exactly at the margin far more often than its level says. The score interval
  keeps its level at every n and disagreement rate measured
  (``benchmarks/promotion_power.py``).
- ``ratio_of_medians``: the ratio of two latencies measured in interleaved rounds, with a
  bootstrap interval over the rounds (resampling rounds keeps each round's pairing).

Every interval is a function of its inputs (bootstraps are seeded): the same predictions give the
same interval, so a decision is repeatable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n``; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = two_sided_z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 and n the bounds are exactly 0 and 1 (rounding would leave 1 - 1e-16).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def two_sided_z(confidence: float) -> float:
    """The two-sided normal quantile: 1.959964 for 95%."""
    from scipy import stats

    return float(stats.norm.ppf((1 + confidence) / 2))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value; ``b``, ``c``: the examples only A, only B got right."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def format_accuracy(accuracy: float, n: int, confidence: float = 0.95) -> str:
    """``0.9780 [0.9601, 0.9880]``: the accuracy and its Wilson interval."""
    lo, hi = wilson(round(accuracy * n), n, confidence)
    return f"{accuracy:.4f} [{lo:.4f}, {hi:.4f}]"


@dataclass(frozen=True)
class Estimate:
    """A difference or ratio with its interval and how it was obtained."""

    estimate: float
    interval: tuple[float, float]
    confidence: float
    n: int  # examples (accuracy) or rounds (latency)
    test: str
    p_value: float | None = None
    only_a: int | None = None  # a paired accuracy difference: the examples only A got right
    only_b: int | None = None  # and those only B got right

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interval": list(self.interval)}


def tango_statistic(
    delta0: float | np.ndarray, b: int | np.ndarray, c: int | np.ndarray, n: int | np.ndarray
) -> np.ndarray:
    """Tango's score statistic for ``H0: p_A - p_B = delta0`` on ``n`` paired examples, ``b``
    of them right only for A and ``c`` only for B (Tango 1998, Statistics in Medicine 17:
    891-908): ``(b - c - n * delta0) / sqrt(n * (2 * q + delta0 * (1 - delta0)))``, where
    ``q``, the chance that only B is right, is its maximum-likelihood value under H0. Large
    values say the difference is above ``delta0``. Works on arrays (the benchmark evaluates
    every outcome at once); 0 where the numerator and the variance are both 0."""
    delta0, b, c, n = (np.asarray(x, float) for x in (delta0, b, c, n))
    quad_a = 2 * n
    quad_b = -b - c + (2 * n - b + c) * delta0
    quad_c = -c * delta0 * (1 - delta0)
    q = (np.sqrt(np.maximum(quad_b * quad_b - 4 * quad_a * quad_c, 0)) - quad_b) / (2 * quad_a)
    variance = n * (2 * q + delta0 * (1 - delta0))
    numerator = b - c - n * delta0
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = numerator / np.sqrt(np.maximum(variance, 0))
    return np.where(variance > 0, statistic, np.where(numerator > 0, np.inf, 0.0))


def tango_interval(b: int, c: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided score interval of ``(b - c) / n``: the ``delta0`` at which Tango's
    statistic equals +z (the lower end) and -z (the upper end)."""
    from scipy.optimize import brentq

    z, estimate = two_sided_z(confidence), (b - c) / n
    edge = 1 - 1e-12

    def lower(d: float) -> float:
        return float(tango_statistic(d, b, c, n)) - z

    def upper(d: float) -> float:
        return float(tango_statistic(d, b, c, n)) + z

    lo = -1.0 if lower(-edge) < 0 else brentq(lower, -edge, estimate, xtol=1e-10)
    hi = 1.0 if upper(edge) > 0 else brentq(upper, estimate, edge, xtol=1e-10)
    return float(lo), float(hi)


def paired_difference(
    correct_a: np.ndarray, correct_b: np.ndarray, confidence: float = 0.95
) -> Estimate:
    """Accuracy of A minus accuracy of B on the same examples (booleans, one per example),
    with Tango's score interval and the exact McNemar p-value."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired predictions of one example each, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        raise ValueError("no examples to compare on")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return Estimate(
        estimate=(only_a - only_b) / n,
        interval=tango_interval(only_a, only_b, n, confidence),
        confidence=confidence,
        n=n,
        test="Tango's score interval of the paired accuracy difference; exact McNemar p-value",
        p_value=mcnemar_exact(only_a, only_b),
        only_a=only_a,
        only_b=only_b,
    )


def ratio_of_medians(
    rounds_a: np.ndarray,
    rounds_b: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Median latency of A over median latency of B, from per-round medians measured in
    interleaved rounds, with a bootstrap interval over the rounds."""
    a, b = np.asarray(rounds_a, float), np.asarray(rounds_b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"one median per round for each, got {a.shape} and {b.shape}")
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("latencies must be positive")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(resamples, len(a)))
    samples = np.median(a[picks], axis=1) / np.median(b[picks], axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail])
    return Estimate(
        estimate=float(np.median(a) / np.median(b)),
        interval=(float(lo), float(hi)),
        confidence=confidence,
        n=len(a),
        test="bootstrap over interleaved rounds of the ratio of median latencies",
    )


def mean_interval(values: list[float] | np.ndarray, confidence: float = 0.95) -> Estimate:
    """The mean of independent repeats (seeds) with its Student-t interval."""
    from scipy import stats

    x = np.asarray(values, float)
    if len(x) == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if len(x) == 1:
        return Estimate(mean, (mean, mean), confidence, 1, "a single repeat: no interval")
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return Estimate(
        mean, (mean - half, mean + half), confidence, len(x), "mean over repeats, Student t"
    )


@dataclass(frozen=True)
class Verdict:
    """The distilled student against its label-only control on the same examples: what
    distillation bought, with its uncertainty."""

    difference: Estimate  # distilled - control accuracy, Tango score interval; exact McNemar p
    teacher_accuracy: float
    control_accuracy: float
    distilled_accuracy: float

    @property
    def gap_closed(self) -> float | None:
        """The share of the teacher-control gap the distilled student closed (1: as good as
        the teacher, 0: no better than the control, negative: worse); None without a gap."""
        gap = self.teacher_accuracy - self.control_accuracy
        if gap <= 0:
            return None
        return (self.distilled_accuracy - self.control_accuracy) / gap

    def describe(self, split: str) -> str:
        d = self.difference
        lo, hi = d.interval
        closed = self.gap_closed
        share = (
            f"closed {closed:.0%} of the teacher-control gap"
            if closed is not None
            else "no teacher-control gap to close (the control is as good as the teacher)"
        )
        return (
            f"Distilled vs control on {split} (n = {d.n}): {d.estimate * 100:+.2f} points "
            f"[{lo * 100:+.2f}, {hi * 100:+.2f}] ({d.confidence:.0%} score CI), "
            f"exact McNemar p = {d.p_value:.3g}; {share} (teacher "
            f"{self.teacher_accuracy:.4f}, control {self.control_accuracy:.4f}, distilled "
            f"{self.distilled_accuracy:.4f})."
        )


def verdict(
    distilled_correct: np.ndarray, control_correct: np.ndarray, teacher_accuracy: float
) -> Verdict:
    """``*_correct``: which examples each student got right (the same examples, in order)."""
    difference = paired_difference(distilled_correct, control_correct)
    return Verdict(
        difference=difference,
        teacher_accuracy=teacher_accuracy,
        control_accuracy=float(np.mean(control_correct)),
        distilled_accuracy=float(np.mean(distilled_correct)),
    )
