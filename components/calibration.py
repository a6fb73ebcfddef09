"""Whether a model's confidences mean what they say, and the temperature that makes them.

- Expected calibration error (ECE; Naeini, Cooper and Hauskrecht 2015, as Guo et al. 2017
  use it): the predictions binned by their top-1 confidence into 15 equal-width bins;
  ECE = sum over bins of (n_b / n) |accuracy_b - mean confidence_b|. 0 is perfect; a model
  that says 0.9 and is right 99% of the time has an ECE near 0.09.
- Temperature scaling (Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural
  Networks", ICML 2017): one scalar T > 0 divides the logits, fitted by minimising the
  negative log-likelihood on the validation split. It never changes the predicted class,
  only how sure the model says it is. Distilled students trained at a temperature are often
  under-confident, which a deployer who thresholds on confidence must know.

NumPy and SciPy only: the fitted temperature travels in the bundle, where a deployment
applies it without this pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, np.float64) / temperature
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reliability(
    logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = BINS
) -> list[dict[str, float]]:
    """Per confidence bin (equal width over [0, 1]): its edges, how many predictions fall in
    it, their accuracy and their mean confidence (NaN where the bin is empty)."""
    probs = softmax(logits, temperature)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # a confidence on an edge belongs to the bin below it (1.0 to the last bin)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "accuracy": float(correct[inside].mean()) if count else float("nan"),
                "confidence": float(confidence[inside].mean()) if count else float("nan"),
            }
        )
    return rows


def expected_calibration_error(
    logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = BINS
) -> float:
    rows = reliability(logits, labels, temperature, bins)
    n = sum(r["count"] for r in rows)
    return float(
        sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"])
    )


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probs = softmax(logits, temperature)
    picked = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of ``labels`` (searched over log T, so
    T stays positive; T in [0.05, 20])."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(found.x))


@dataclass(frozen=True)
class Calibration:
    """The temperature fitted on validation, and the ECE before and after it, on validation
    (where it was fitted) and on test (reported)."""

    temperature: float
    ece_val_before: float
    ece_val_after: float
    ece_test_before: float
    ece_test_after: float
    bins: int
    val_n: int
    test_n: int
    test_reliability_before: list[dict[str, float]]
    test_reliability_after: list[dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, float]:
        """The figures, without the per-bin tables (for preprocessing.json and metrics)."""
        return {
            "temperature": self.temperature,
            "ece_val_before": self.ece_val_before,
            "ece_val_after": self.ece_val_after,
            "ece_test_before": self.ece_test_before,
            "ece_test_after": self.ece_test_after,
        }


def calibrate(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    bins: int = BINS,
) -> Calibration:
    """Fit the temperature on validation; ECE before and after, on validation and test."""
    t = fit_temperature(val_logits, val_labels)
    return Calibration(
        temperature=t,
        ece_val_before=expected_calibration_error(val_logits, val_labels, 1.0, bins),
        ece_val_after=expected_calibration_error(val_logits, val_labels, t, bins),
        ece_test_before=expected_calibration_error(test_logits, test_labels, 1.0, bins),
        ece_test_after=expected_calibration_error(test_logits, test_labels, t, bins),
        bins=bins,
        val_n=len(val_labels),
        test_n=len(test_labels),
        test_reliability_before=reliability(test_logits, test_labels, 1.0, bins),
        test_reliability_after=reliability(test_logits, test_labels, t, bins),
    )
