"""Champion/challenger: score both ONNX models now, on examples neither trained on, and decide
with statistics.

1. The evaluation set: this run's validation split, minus every image the champion was
   trained on (by content hash: after a data change or a new split seed, most new validation
   images may be old training images). None left, or fewer than the margin needs
   (``min_examples``) and the challenger neither shown non-inferior nor clearly worse (nor
   too slow) on them: incomparable, the champion is kept.
2. Each model is fed inputs prepared by its own recipe (the normalisation its ONNX metadata
   records), through ONNX Runtime, and timed at batch 1 in interleaved rounds, so a drift in
   machine load hits both alike.
3. Accuracy: non-inferiority on the paired difference (challenger - champion, the same
   examples): the challenger passes when the lower end of Tango's score interval (two-sided
   at ``confidence``, so a one-sided test at (1 - confidence) / 2) lies above
   ``-max_accuracy_drop``; the exact McNemar p-value is recorded beside it. A challenger
   exactly at the margin is promoted at most about that often, at any n and disagreement
   rate (``benchmarks/promotion_power.py``). Latency: the challenger fails when the interval
   of its p50 over the champion's lies above ``max_latency_ratio``.
4. Drift: every challenger must also be non-inferior, by the same margin, to the anchor, the
   first champion of the current split version, so a chain of small losses, each inside the
   margin, cannot add up to more than the margin.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.config import PromotionConfig
from components.data import Dataset, DatasetInfo, example_hashes, standardize_pixels
from components.latency import time_calls
from components.onnx_export import INPUT_NAME, OUTPUT_NAME, onnx_session, run_onnx
from components.stats import Estimate, paired_difference, ratio_of_medians, two_sided_z, wilson


class IncomparableError(ValueError):
    """The champion cannot be scored on this run's data (other input shape or classes)."""


@dataclass(frozen=True)
class EvaluationSet:
    """The examples a decision is made on, and how they were chosen."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray
    split: str
    pool: int  # examples of the split
    overlap_removed: int  # of them, images the champion was trained on


def evaluation_set(
    dataset: Dataset, exclude: Iterable[str] = (), split: str = "val"
) -> EvaluationSet:
    """The split's examples whose image is not in ``exclude`` (content hashes)."""
    images, labels = dataset.split(split)
    excluded = set(exclude)
    keep = np.array([h not in excluded for h in example_hashes(np.asarray(images))], bool)
    return EvaluationSet(
        images=np.asarray(images)[keep],
        labels=np.asarray(labels)[keep],
        split=split,
        pool=len(keep),
        overlap_removed=int((~keep).sum()),
    )


@dataclass(frozen=True)
class Scores:
    """One model's figures as measured now: per-example correctness and per-round p50s."""

    correct: np.ndarray = field(repr=False)  # bool, one per evaluation example
    rounds_ms: np.ndarray = field(repr=False)  # median ms at batch 1, one per round

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.rounds_ms))

    def summary(self, confidence: float) -> dict[str, Any]:
        n, k = len(self.correct), int(self.correct.sum())
        return {
            "accuracy": self.accuracy,
            "accuracy_interval": list(wilson(k, n, confidence)),
            "n": n,
            "p50_ms": self.p50_ms,
        }


def own_inputs(images: np.ndarray, path: Path, fallback: DatasetInfo) -> np.ndarray:
    """The images as the model at ``path`` wants them: the normalisation its metadata records
    (this pipeline's exports carry it), else the data's own."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    mean = json.loads(meta["normalization_mean"]) if "normalization_mean" in meta else fallback.mean
    std = json.loads(meta["normalization_std"]) if "normalization_std" in meta else fallback.std
    return standardize_pixels(images, mean, std).contiguous().numpy()


def _check_compatible(session: Any, info: DatasetInfo, path: Path) -> None:
    expected = [info.in_channels, *info.image_size]
    shape = session.get_inputs()[0].shape
    if session.get_inputs()[0].name != INPUT_NAME or list(shape[1:]) != expected:
        raise IncomparableError(
            f"{path}: input {session.get_inputs()[0].name} {shape} does not take this "
            f"dataset's images (batch, {', '.join(map(str, expected))})"
        )
    classes = session.get_outputs()[0].shape[-1]
    if session.get_outputs()[0].name != OUTPUT_NAME or classes != info.num_classes:
        raise IncomparableError(
            f"{path}: {classes} output classes, the dataset has {info.num_classes}"
        )


def interleaved_rounds(
    calls: Mapping[str, Callable[[], object]], warmup: int, iterations: int, rounds: int
) -> dict[str, np.ndarray]:
    """Per-round median latency (ms) of each call, the calls taking turns round by round."""
    for call in calls.values():
        time_calls(call, warmup, 0)
    per_round = max(1, iterations // rounds)
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            medians[name].append(float(np.median(time_calls(call, 0, per_round))))
    return {name: np.asarray(values) for name, values in medians.items()}


def score_models(
    paths: dict[str, Path], evaluation: EvaluationSet, info: DatasetInfo, config: PromotionConfig
) -> dict[str, Scores]:
    """Per-example correctness on the evaluation set and interleaved batch-1 latency of each
    ONNX model, each on its own input recipe."""
    sessions = {name: onnx_session(path, threads=config.threads) for name, path in paths.items()}
    for name, session in sessions.items():
        _check_compatible(session, info, paths[name])
    inputs = {name: own_inputs(evaluation.images, path, info) for name, path in paths.items()}
    correct = {
        name: run_onnx(session, inputs[name]).argmax(1) == evaluation.labels
        for name, session in sessions.items()
    }
    first = {name: x[:1] for name, x in inputs.items()}
    calls = {
        name: functools.partial(session.run, [OUTPUT_NAME], {INPUT_NAME: first[name]})
        for name, session in sessions.items()
    }
    rounds = interleaved_rounds(calls, config.warmup, config.iterations, config.rounds)
    return {name: Scores(correct[name], rounds[name]) for name in sessions}


@dataclass(frozen=True)
class Decision:
    decision: str  # promoted, rejected, incomparable
    reason: str
    n_evaluated: int
    n_overlap_removed: int
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    accuracy_difference: Estimate | None  # challenger - champion
    latency_ratio: Estimate | None  # challenger / champion
    rule: str
    policy: dict[str, Any]
    anchor_difference: Estimate | None = None  # challenger - anchor, when the anchor is judged
    anchor_version: str | None = None

    @property
    def promote(self) -> bool:
        return self.decision == "promoted"

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "promote": self.promote,
            "reason": self.reason,
            "n_evaluated": self.n_evaluated,
            "n_overlap_removed": self.n_overlap_removed,
            "challenger": self.challenger,
            "champion": self.champion,
            "accuracy_difference": (
                self.accuracy_difference.as_dict() if self.accuracy_difference else None
            ),
            "latency_ratio": self.latency_ratio.as_dict() if self.latency_ratio else None,
            "anchor_version": self.anchor_version,
            "anchor_difference": (
                self.anchor_difference.as_dict() if self.anchor_difference else None
            ),
            "rule": self.rule,
            "policy": self.policy,
        }


def min_examples(policy: PromotionConfig) -> int:
    """The fewest examples on which a challenger that is not shown non-inferior is rejected:
    ``promotion.min_examples`` when set, else the fewest on which a challenger that agrees
    with the champion on every example passes the margin (Tango's statistic at b = c = 0 is
    sqrt(n m / (1 - m)), so n >= z^2 (1 - m) / m: 381 at a 1-point margin and 95%, 765 at
    half a point). On fewer, even an equal challenger could not pass, so not passing says
    nothing against it: the decision is incomparable, and a person decides."""
    if policy.min_examples is not None:
        return policy.min_examples
    margin = policy.max_accuracy_drop
    if margin <= 0:
        return 1
    z = two_sided_z(policy.confidence)
    return max(1, math.ceil(z * z * (1 - margin) / margin - 1e-9))


def _terms(policy: PromotionConfig) -> dict[str, Any]:
    return {
        "max_accuracy_drop": policy.max_accuracy_drop,
        "max_latency_ratio": policy.max_latency_ratio,
        "min_examples": min_examples(policy),
        "confidence": policy.confidence,
        "promote_first": policy.promote_first,
        "latency_threads": policy.threads,
    }


def _rule(policy: PromotionConfig) -> str:
    return (
        f"promote when the {policy.confidence:.0%} interval of challenger - champion accuracy "
        f"(Tango's score interval on the same examples) lies above "
        f"-{policy.max_accuracy_drop}, and so does that of challenger - anchor (the first "
        "champion of this split version), and the interval of challenger / champion p50 at "
        f"batch 1 does not lie above {policy.max_latency_ratio}; on at least "
        f"{min_examples(policy)} validation examples that neither model was trained on"
    )


def first_model(challenger: Scores, evaluation: EvaluationSet, policy: PromotionConfig) -> Decision:
    outcome = "promoted" if policy.promote_first else "rejected"
    reason = (
        "no champion yet: the first model is promoted"
        if policy.promote_first
        else "no champion yet, and promotion.promote_first is off"
    )
    return Decision(
        outcome,
        reason,
        len(evaluation.labels),
        evaluation.overlap_removed,
        challenger.summary(policy.confidence),
        None,
        None,
        None,
        _rule(policy),
        _terms(policy),
    )


def incomparable(
    challenger: Scores | None, why: str, evaluation: EvaluationSet | None, policy: PromotionConfig
) -> Decision:
    """A champion that cannot be compared fairly is never replaced silently: a person decides."""
    return Decision(
        "incomparable",
        f"incomparable: champion kept ({why})",
        len(evaluation.labels) if evaluation else 0,
        evaluation.overlap_removed if evaluation else 0,
        challenger.summary(policy.confidence) if challenger else {},
        None,
        None,
        None,
        _rule(policy),
        _terms(policy),
    )


def decide(
    challenger: Scores,
    champion: Scores,
    evaluation: EvaluationSet,
    policy: PromotionConfig,
    anchor: Scores | None = None,
    anchor_version: str | None = None,
) -> Decision:
    """Non-inferiority on accuracy (to the champion, and to the anchor when it is another
    model), a ceiling on latency, all judged on their intervals."""
    confidence, resamples = policy.confidence, policy.resamples
    accuracy = paired_difference(challenger.correct, champion.correct, confidence)
    latency = ratio_of_medians(challenger.rounds_ms, champion.rounds_ms, confidence, resamples)
    lo, hi = accuracy.interval
    failures = []
    if lo < -policy.max_accuracy_drop - 1e-12:
        failures.append(
            f"accuracy {challenger.accuracy:.4f} vs {champion.accuracy:.4f}: the difference's "
            f"interval [{lo * 100:+.2f}, {hi * 100:+.2f}] points reaches below "
            f"-{policy.max_accuracy_drop * 100:.2f} (McNemar p = {accuracy.p_value:.3g}, "
            f"n = {accuracy.n})"
        )
    drift = None
    if anchor is not None:
        drift = paired_difference(challenger.correct, anchor.correct, confidence)
        if drift.interval[0] < -policy.max_accuracy_drop - 1e-12:
            failures.append(
                f"drift: accuracy {challenger.accuracy:.4f} vs {anchor.accuracy:.4f} of version "
                f"{anchor_version}, the first champion of this split: the difference's "
                f"interval [{drift.interval[0] * 100:+.2f}, {drift.interval[1] * 100:+.2f}] "
                f"points reaches below -{policy.max_accuracy_drop * 100:.2f}"
            )
    if latency.interval[0] > policy.max_latency_ratio:
        failures.append(
            f"p50 at batch 1 is {latency.estimate:.2f}x the champion's (interval "
            f"[{latency.interval[0]:.2f}, {latency.interval[1]:.2f}], allowed "
            f"{policy.max_latency_ratio:.2f}x)"
        )
    outcome = "rejected" if failures else "promoted"
    needed = min_examples(policy)
    slow = latency.interval[0] > policy.max_latency_ratio
    # Clearly worse (the whole interval below the margin) is evidence, however few examples.
    clearly_worse = any(
        d is not None and d.interval[1] < -policy.max_accuracy_drop for d in (accuracy, drift)
    )
    if failures and not slow and not clearly_worse and accuracy.n < needed:
        # Too few examples to show the margin even for an equal model: failing to show it is
        # no evidence against the challenger, so a person decides. (A challenger that passes
        # on few examples is promoted: the test's error rate holds at every n.)
        outcome = "incomparable"
        reason = (
            f"incomparable: champion kept ({accuracy.n} validation examples cannot show a "
            f"margin of {policy.max_accuracy_drop * 100:g} points, an equal model needs "
            f"{needed} (promotion.min_examples, promotion.max_accuracy_drop): "
            + "; ".join(failures)
            + ")"
        )
    elif failures:
        reason = "kept the champion: " + "; ".join(failures)
    else:
        reason = (
            f"promoted: accuracy {challenger.accuracy:.4f} vs {champion.accuracy:.4f} "
            f"(difference [{lo * 100:+.2f}, {hi * 100:+.2f}] points, n = {accuracy.n}), "
            f"p50 {latency.estimate:.2f}x the champion's"
        )
    return Decision(
        outcome,
        reason,
        accuracy.n,
        evaluation.overlap_removed,
        challenger.summary(confidence),
        champion.summary(confidence),
        accuracy,
        latency,
        _rule(policy),
        _terms(policy),
        drift,
        anchor_version,
    )


def decision_markdown(
    decision: Decision, model_name: str, challenger_version: str, champion_version: str | None
) -> str:
    """The decision record: both sides' figures with intervals, the rule, the outcome."""

    def row(label: str, side: dict[str, Any] | None) -> str:
        if not side:
            return f"| {label} | - | - |"
        lo, hi = side["accuracy_interval"]
        accuracy = f"{side['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]"
        return f"| {label} | {accuracy} | {side['p50_ms']:.4f} |"

    champion_label = f"champion (version {champion_version})" if champion_version else "champion"
    lines = [
        f"# Promotion decision: {model_name}",
        "",
        f"**{decision.decision.upper()}**: {decision.reason}",
        "",
        f"Evaluated on {decision.n_evaluated} validation examples of this run that neither model "
        f"was trained on ({decision.n_overlap_removed} removed as images the champion was "
        "trained on); the test split is only reported, never decided on.",
        "",
        "| model | accuracy [95% interval] | p50 ms @ batch 1 |",
        "|---|---:|---:|",
        row(f"challenger (version {challenger_version})", decision.challenger),
        row(champion_label, decision.champion),
        "",
    ]
    if decision.accuracy_difference is not None:
        d = decision.accuracy_difference
        lines.append(
            f"- accuracy difference (challenger - champion): {d.estimate * 100:+.2f} points, "
            f"interval [{d.interval[0] * 100:+.2f}, {d.interval[1] * 100:+.2f}], "
            f"exact McNemar p = {d.p_value:.3g}"
        )
    if decision.anchor_difference is not None:
        d = decision.anchor_difference
        lines.append(
            f"- drift (challenger - anchor, version {decision.anchor_version}, the first "
            f"champion of this split): {d.estimate * 100:+.2f} points, interval "
            f"[{d.interval[0] * 100:+.2f}, {d.interval[1] * 100:+.2f}]"
        )
    if decision.latency_ratio is not None:
        r = decision.latency_ratio
        lines.append(
            f"- p50 ratio (challenger / champion): {r.estimate:.3f}, interval "
            f"[{r.interval[0]:.3f}, {r.interval[1]:.3f}] over {r.n} interleaved rounds"
        )
    lines += ["", f"Rule: {decision.rule}.", ""]
    lines.append("Policy: " + ", ".join(f"{k} = {v}" for k, v in decision.policy.items()))
    return "\n".join(lines) + "\n"
