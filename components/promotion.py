"""Champion/challenger: score both ONNX models now, on the same test split, and decide.

Nothing here is read from earlier logs: accuracy comes from running each model through
ONNX Runtime on this run's test split, latency from timing both on this machine in
alternating rounds, so a drift in machine load during the check hits both sides alike.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.benchmark import time_calls
from components.config import PromotionConfig
from components.data import Dataset, normalize
from components.onnx_export import INPUT_NAME, OUTPUT_NAME, onnx_session, run_onnx

ROUNDS = 10  # latency rounds per model, alternating between the two


class IncomparableError(ValueError):
    """The champion cannot be scored on this run's test split (other input shape or classes)."""


@dataclass(frozen=True)
class Scores:
    """One model's figures as measured now."""

    accuracy: float
    p50_ms: float  # at batch 1, ``threads`` ONNX Runtime threads


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger: Scores
    champion: Scores | None
    accuracy_drop: float | None  # champion - challenger (positive: the challenger is worse)
    latency_ratio: float | None  # challenger p50 / champion p50
    policy: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_compatible(session: Any, dataset: Dataset, path: Path) -> None:
    expected = [dataset.info.in_channels, *dataset.info.image_size]
    shape = session.get_inputs()[0].shape
    if session.get_inputs()[0].name != INPUT_NAME or list(shape[1:]) != expected:
        raise IncomparableError(
            f"{path}: input {session.get_inputs()[0].name} {shape} does not take this "
            f"dataset's images (batch, {', '.join(map(str, expected))})"
        )
    classes = session.get_outputs()[0].shape[-1]
    if session.get_outputs()[0].name != OUTPUT_NAME or classes != dataset.info.num_classes:
        raise IncomparableError(
            f"{path}: {classes} output classes, the dataset has {dataset.info.num_classes}"
        )


def score_models(
    paths: dict[str, Path], dataset: Dataset, config: PromotionConfig
) -> dict[str, Scores]:
    """Test accuracy and batch-1 p50 of each ONNX model, timed in alternating rounds."""
    images, labels = dataset.split("test")
    inputs = normalize(np.asarray(images), dataset.info).contiguous().numpy()
    sessions = {name: onnx_session(path, threads=config.threads) for name, path in paths.items()}
    for name, session in sessions.items():
        _check_compatible(session, dataset, paths[name])
    accuracy = {
        name: float((run_onnx(session, inputs).argmax(1) == labels).mean())
        for name, session in sessions.items()
    }
    one = inputs[:1]
    calls = {
        name: functools.partial(session.run, [OUTPUT_NAME], {INPUT_NAME: one})
        for name, session in sessions.items()
    }
    for call in calls.values():
        time_calls(call, config.warmup, 0)
    times: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    per_round = max(1, config.iterations // ROUNDS)
    for _ in range(ROUNDS):
        for name, call in calls.items():
            times[name].append(time_calls(call, 0, per_round))
    return {
        name: Scores(accuracy[name], float(np.median(np.concatenate(times[name]))))
        for name in sessions
    }


def _terms(policy: PromotionConfig) -> dict[str, Any]:
    return {
        "max_accuracy_drop": policy.max_accuracy_drop,
        "max_latency_ratio": policy.max_latency_ratio,
        "promote_first": policy.promote_first,
        "latency_threads": policy.threads,
    }


def incomparable(challenger: Scores, why: str, policy: PromotionConfig) -> Decision:
    """A champion for other data or classes is never replaced silently: a person decides."""
    reason = f"kept the champion: it cannot be scored on this run's test split ({why})"
    return Decision(False, reason, challenger, None, None, None, _terms(policy))


def decide(challenger: Scores, champion: Scores | None, policy: PromotionConfig) -> Decision:
    """Promote unless the challenger loses more accuracy or latency than the policy allows."""
    terms = _terms(policy)
    if champion is None:
        reason = (
            "no champion yet: the first model is promoted"
            if policy.promote_first
            else "no champion yet, and promotion.promote_first is off"
        )
        return Decision(policy.promote_first, reason, challenger, None, None, None, terms)
    drop = champion.accuracy - challenger.accuracy
    ratio = challenger.p50_ms / champion.p50_ms
    failures = []
    if drop > policy.max_accuracy_drop + 1e-12:
        failures.append(
            f"accuracy {challenger.accuracy:.4f} is {drop * 100:.2f} points below the "
            f"champion's {champion.accuracy:.4f} (allowed {policy.max_accuracy_drop * 100:.2f})"
        )
    if ratio > policy.max_latency_ratio:
        failures.append(
            f"p50 at batch 1 {challenger.p50_ms:.4f} ms is {ratio:.2f}x the champion's "
            f"{champion.p50_ms:.4f} ms (allowed {policy.max_latency_ratio:.2f}x)"
        )
    if failures:
        reason = "kept the champion: " + "; ".join(failures)
        return Decision(False, reason, challenger, champion, drop, ratio, terms)
    reason = (
        f"promoted: accuracy {challenger.accuracy:.4f} vs {champion.accuracy:.4f}, "
        f"p50 {challenger.p50_ms:.4f} vs {champion.p50_ms:.4f} ms ({ratio:.2f}x)"
    )
    return Decision(True, reason, challenger, champion, drop, ratio, terms)


def decision_markdown(
    decision: Decision, model_name: str, challenger_version: str, champion_version: str | None
) -> str:
    """The decision record: both sides' figures, the policy and the outcome."""

    def cell(scores: Scores | None, field: str, fmt: str) -> str:
        return "-" if scores is None else format(getattr(scores, field), fmt)

    champion_label = f"champion (version {champion_version})" if champion_version else "champion"
    lines = [
        f"# Promotion decision: {model_name}",
        "",
        f"**{'PROMOTED' if decision.promote else 'NOT PROMOTED'}**: {decision.reason}",
        "",
        "| model | test accuracy (ONNX Runtime) | p50 ms @ batch 1 |",
        "|---|---:|---:|",
        f"| challenger (version {challenger_version}) | "
        f"{cell(decision.challenger, 'accuracy', '.4f')} | "
        f"{cell(decision.challenger, 'p50_ms', '.4f')} |",
        f"| {champion_label} | {cell(decision.champion, 'accuracy', '.4f')} | "
        f"{cell(decision.champion, 'p50_ms', '.4f')} |",
        "",
        "Policy: " + ", ".join(f"{k} = {v}" for k, v in decision.policy.items()),
        "",
        "Both models were scored at decision time on this run's test split.",
    ]
    return "\n".join(lines) + "\n"
