"""How a default is chosen so that the choice survives the noise.

The evidence for each candidate is one held-out accuracy per independent unit (a unit is a
fold, a teacher seed and a student seed together: nothing is shared between units, so each
is one observation). Candidates are compared on the same units, pairwise.

The rule (``choose``): the candidate with the best mean replaces the incumbent only when its
paired advantage over the incumbent is significant (one-sided paired t-test over the units
at ``alpha``); otherwise the incumbent, the simpler option already in place, stays. How sure
the choice is: ``reselection_rate`` reruns the rule on units resampled with replacement and
counts how often it lands on the same candidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.stats import Estimate, mean_interval


@dataclass(frozen=True)
class Comparison:
    """A candidate against the incumbent, paired over the units."""

    candidate: str
    mean: float  # the candidate's mean held-out accuracy
    difference: Estimate  # candidate - incumbent, per unit, Student-t interval
    standard_error: float
    p_value: float  # one-sided: the candidate is better

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "mean": self.mean,
            "difference": self.difference.as_dict(),
            "standard_error": self.standard_error,
            "p_value": self.p_value,
        }


@dataclass(frozen=True)
class Choice:
    chosen: str
    incumbent: str
    best: str  # the best mean, whether or not it was significant
    units: int
    comparisons: dict[str, Comparison]
    alpha: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "incumbent": self.incumbent,
            "best_mean": self.best,
            "units": self.units,
            "alpha": self.alpha,
            "rule": "the best mean replaces the incumbent only if its paired advantage is "
            f"significant (one-sided paired t over units, p < {self.alpha})",
            "comparisons": {k: c.as_dict() for k, c in self.comparisons.items()},
        }


def paired_standard_error(differences: np.ndarray) -> float:
    """The standard error of the mean of per-unit differences (0 for a single unit)."""
    d = np.asarray(differences, float)
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def one_sided_p(differences: np.ndarray) -> float:
    """P-value of the paired t-test that the mean difference is above zero."""
    from scipy import stats

    d = np.asarray(differences, float)
    if len(d) < 2:
        return 1.0
    se = paired_standard_error(d)
    if se == 0:
        return 0.0 if d.mean() > 0 else 1.0
    return float(stats.t.sf(d.mean() / se, len(d) - 1))


def _matrix(scores: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    names = list(scores)
    lengths = {len(np.asarray(scores[n])) for n in names}
    if len(lengths) != 1:
        raise ValueError(f"candidates were scored on different units: {sorted(lengths)}")
    return names, np.stack([np.asarray(scores[n], float) for n in names])


def _decide(names: list[str], matrix: np.ndarray, incumbent: int, alpha: float) -> int:
    best = int(np.argmax(matrix.mean(axis=1)))
    if best == incumbent or one_sided_p(matrix[best] - matrix[incumbent]) >= alpha:
        return incumbent
    return best


def choose(scores: Mapping[str, np.ndarray], incumbent: str, alpha: float = 0.05) -> Choice:
    """``scores``: candidate -> its held-out accuracy on each unit (the same units, in the
    same order, for every candidate); ``incumbent``: the default in place."""
    if incumbent not in scores:
        raise ValueError(f"the incumbent {incumbent!r} is not among the candidates")
    names, matrix = _matrix(scores)
    inc = names.index(incumbent)
    chosen = _decide(names, matrix, inc, alpha)
    comparisons = {}
    for i, name in enumerate(names):
        d = matrix[i] - matrix[inc]
        comparisons[name] = Comparison(
            candidate=name,
            mean=float(matrix[i].mean()),
            difference=mean_interval(d),
            standard_error=paired_standard_error(d),
            p_value=one_sided_p(d) if i != inc else 1.0,
        )
    return Choice(
        chosen=names[chosen],
        incumbent=incumbent,
        best=names[int(np.argmax(matrix.mean(axis=1)))],
        units=matrix.shape[1],
        comparisons=comparisons,
        alpha=alpha,
    )


def reselection_rate(
    scores: Mapping[str, np.ndarray],
    incumbent: str,
    alpha: float = 0.05,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """How often the rule picks each candidate when the units are resampled with
    replacement (a bootstrap over the independent units); the chosen one's share is how
    often the selection would pick it again."""
    names, matrix = _matrix(scores)
    inc = names.index(incumbent)
    rng = np.random.default_rng(seed)
    units = matrix.shape[1]
    counts = np.zeros(len(names))
    for _ in range(resamples):
        picked = rng.integers(0, units, size=units)
        counts[_decide(names, matrix[:, picked], inc, alpha)] += 1
    return {name: float(c / resamples) for name, c in zip(names, counts, strict=True)}


def best_mean_rate(
    scores: Mapping[str, np.ndarray], resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """How often each candidate has the best mean when the units are resampled with
    replacement: the stability of a choice made by the best mean alone (no incumbent)."""
    names, matrix = _matrix(scores)
    rng = np.random.default_rng(seed)
    units = matrix.shape[1]
    counts = np.zeros(len(names))
    for _ in range(resamples):
        picked = rng.integers(0, units, size=units)
        counts[int(np.argmax(matrix[:, picked].mean(axis=1)))] += 1
    return {name: float(c / resamples) for name, c in zip(names, counts, strict=True)}
