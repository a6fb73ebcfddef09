"""``promotion``: the new model (challenger) against the registered champion.

1. The champion is fetched through the registry (wherever it lives), with the record of the
   images it was trained on (``training_examples.json`` of its handoff run).
2. Both are scored now (components/promotion.py), each on its own input recipe, on this
   run's validation images minus those the champion trained on; none left, too few to show
   the margin (``promotion.min_examples``) and the challenger not shown non-inferior, or a
   champion that records no training examples or takes other inputs: incomparable, the
   champion is kept, and a person decides.
3. The champion alias moves only when the paired accuracy interval and the latency interval
   say so. The record, with the estimates, intervals, n and the rule, goes on both model
   versions, the parent run and this run (``promotion.md``, ``promotion.json``).
4. Drift: a champion carries its split version and its anchor, the first champion of that
   split version (``promotion.split_version``, ``promotion.anchor_version``). When the
   anchor is another model than the champion, it is scored too and the challenger must not
   be worse than it by more than the margin either; a challenger promoted under a new split
   version becomes its anchor.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from components.config import PipelineConfig
from components.data import Dataset, split_version
from components.handoff import REFUSED_KEY, mark_refused
from components.promotion import (
    Decision,
    EvaluationSet,
    IncomparableError,
    Scores,
    decide,
    decision_markdown,
    evaluation_set,
    first_model,
    incomparable,
    score_models,
)
from flows.refs import DataRef, HandoffRef, OnnxRef, PromotionRef
from flows.stage import Outcome, Record, Stage, StageContext
from flows.tracking import DATASET_TAG


def _find_onnx(directory: Path) -> Path:
    models = sorted(directory.rglob("*.onnx"))
    if not models:
        raise FileNotFoundError(f"{directory}: the registered model holds no .onnx file")
    return models[0]


class Promotion(Stage[PromotionRef]):
    name = "promotion"
    splits = ("val",)
    output = PromotionRef
    reads = ("promotion", "dataset_name", "split")
    needs = ("prepare-data", "onnx-export", "handoff")
    cached = False

    def enabled(self, config: PipelineConfig) -> bool:
        return config.promotion.enabled

    def run(self, ctx: StageContext) -> Outcome[PromotionRef]:
        policy = ctx.config.promotion
        tracker = ctx.tracker
        handoff = ctx.input("handoff", HandoffRef)
        dataset = ctx.input("prepare-data", DataRef).load(ctx.work_dir)
        challenger_path = ctx.work_dir / ctx.input("onnx-export", OnnxRef).export.path
        name = handoff.model_name
        before = tracker.registry.alias_version(name, policy.champion_alias)
        if not handoff.registered or handoff.version is None:
            # Nothing new to judge: no version, or the bytes of one judged before.
            reason = f"nothing to judge: the model was {handoff.registration}"
            ctx.log.info("%s: %s", name, reason)
            skipped = PromotionRef(
                promoted=False,
                decision="skipped",
                reason=reason,
                model_name=name,
                challenger_version=handoff.version,
                champion_version_before=before,
                champion_version_after=before,
                markdown=f"# Promotion decision: {name}\n\n**SKIPPED**: {reason}\n",
            )
            tags = {"promotion.decision": "skipped", "promotion.reason": reason}
            return Outcome(skipped, Record(tags=tags), parent=Record(tags=tags))
        split = split_version(ctx.config.split)
        anchor = self.anchor(ctx, name, before, split)
        with tempfile.TemporaryDirectory() as scratch:
            decision = self.judge(
                ctx, dataset, challenger_path, name, before, anchor, Path(scratch)
            )
        version = handoff.version
        if decision.promote:
            tracker.registry.set_alias(name, policy.champion_alias, version)
        after = version if decision.promote else before
        tags = self.tags(decision, version, before, ctx.pipeline.parent_run_id)
        # What this version carries if it is (or becomes) a champion: its split version and
        # the anchor of the chain it continues, or itself when it starts one. A version not
        # compared with the chain (the first, or an incomparable one a person may promote by
        # hand) starts its own.
        compared = decision.accuracy_difference is not None
        chain = (anchor or version) if compared else version
        tags |= {"promotion.split_version": split, "promotion.anchor_version": chain}
        tracker.registry.set_version_tags(name, version, tags)
        if before is not None:
            # The champion keeps its own promotion record; the challenge goes beside it.
            challenge = {k.replace("promotion.", "last_challenge.", 1): v for k, v in tags.items()}
            tracker.registry.set_version_tags(name, before, challenge)
        markdown = decision_markdown(decision, name, version, before)
        record = {
            **decision.as_dict(),
            "challenger_version": version,
            "champion_version": before,
        }
        texts: dict[str, str | dict[str, Any]] = {
            "promotion.md": markdown,
            "promotion.json": record,
        }
        ctx.log.info(
            "%s version %s %s (@%s now on version %s): %s",
            name,
            version,
            decision.decision,
            policy.champion_alias,
            after or "none",
            decision.reason,
        )
        if decision.decision in ("rejected", "incomparable"):
            # The bundle written for this model says so, where whoever deploys it looks, and
            # so does its registry version (the MLflow copy of the bundle was logged before).
            why = f"not promoted: {decision.reason}"
            mark_refused(ctx.work_dir / handoff.bundle, why)
            tracker.registry.set_version_tags(name, version, {REFUSED_KEY: f"refused: {why}"})
        ref = PromotionRef(
            promoted=decision.promote,
            decision=decision.decision,
            reason=decision.reason,
            model_name=name,
            challenger_version=version,
            champion_version_before=before,
            champion_version_after=after,
            markdown=markdown,
        )
        return Outcome(
            ref,
            Record(metrics=self.metrics(decision), tags=tags, texts=texts),
            parent=Record(tags=tags, texts=texts),
        )

    @staticmethod
    def anchor(ctx: StageContext, name: str, champion: str | None, split: str) -> str | None:
        """The first champion of this split version, when the champion continues a chain on
        it (a champion recorded before anchors were: its own anchor); None otherwise."""
        if champion is None:
            return None
        tags = ctx.tracker.registry.version_tags(name, champion)
        if tags.get("promotion.split_version", split) != split:
            return None  # the champion was chosen on another split: a new chain starts
        return tags.get("promotion.anchor_version") or champion

    @staticmethod
    def judge(
        ctx: StageContext,
        dataset: Dataset,
        challenger: Path,
        name: str,
        champion: str | None,
        anchor: str | None,
        scratch: Path,
    ) -> Decision:
        """In order: 1. no champion: the first model; 2. a champion (or an anchor) that
        records no training examples, or leaves no clean validation example: incomparable;
        3. all scored on the clean examples (a champion that takes other inputs:
        incomparable) and judged by ``decide``."""
        policy, tracker, info = ctx.config.promotion, ctx.tracker, dataset.info

        def alone(evaluation: EvaluationSet) -> Scores:
            return score_models({"challenger": challenger}, evaluation, info, policy)["challenger"]

        if champion is None:
            evaluation = evaluation_set(dataset)
            return first_model(alone(evaluation), evaluation, policy)
        theirs = tracker.registry.version_tags(name, champion).get(DATASET_TAG)
        if theirs != ctx.config.dataset_name:
            why = (
                f"version {champion} was trained on dataset {theirs or 'unrecorded'}, this run "
                f"on {ctx.config.dataset_name}"
            )
            return incomparable(
                alone(evaluation_set(dataset)), why, evaluation_set(dataset), policy
            )
        judged = [champion] if anchor in (None, champion) else [champion, anchor]
        trained_on: list[str] = []
        for version in judged:
            examples = tracker.registry.training_examples(name, version, scratch / version)
            if examples is None:
                evaluation = evaluation_set(dataset, trained_on)
                why = f"version {version} records no training examples to leave out"
                return incomparable(alone(evaluation), why, evaluation, policy)
            trained_on += examples
        evaluation = evaluation_set(dataset, trained_on)
        if len(evaluation.labels) == 0:
            why = (
                f"none of {evaluation.pool} validation examples remain after removing the "
                "images the champion (and the anchor) were trained on"
            )
            return incomparable(None, why, evaluation, policy)
        paths = {"challenger": challenger}
        for role, version in zip(("champion", "anchor"), judged, strict=False):
            paths[role] = _find_onnx(
                tracker.registry.download_version(name, version, scratch / role)
            )
        try:
            scores = score_models(paths, evaluation, info, policy)
        except IncomparableError as err:
            return incomparable(alone(evaluation), str(err), evaluation, policy)
        if "anchor" not in scores:
            return decide(scores["challenger"], scores["champion"], evaluation, policy)
        return decide(
            scores["challenger"], scores["champion"], evaluation, policy, scores["anchor"], anchor
        )

    @staticmethod
    def tags(decision: Decision, challenger: str, champion: str | None, run: str) -> dict[str, Any]:
        tags: dict[str, Any] = {
            "promotion.decision": decision.decision,
            "promotion.reason": decision.reason,
            "promotion.rule": decision.rule,
            "promotion.policy": json.dumps(decision.policy, sort_keys=True),
            "promotion.pipeline_run_id": run,
            "promotion.challenger_version": challenger,
            "promotion.champion_version": champion or "none",
            "promotion.n_evaluated": decision.n_evaluated,
            "promotion.n_overlap_removed": decision.n_overlap_removed,
        }
        for side in ("challenger", "champion"):
            figures = getattr(decision, side)
            if figures:
                lo, hi = figures["accuracy_interval"]
                tags[f"promotion.{side}_accuracy"] = f"{figures['accuracy']:.6f}"
                tags[f"promotion.{side}_accuracy_interval"] = f"[{lo:.6f}, {hi:.6f}]"
                tags[f"promotion.{side}_p50_ms"] = f"{figures['p50_ms']:.6f}"
        if decision.accuracy_difference is not None:
            d = decision.accuracy_difference
            tags["promotion.accuracy_difference"] = f"{d.estimate:.6f}"
            tags["promotion.accuracy_difference_interval"] = (
                f"[{d.interval[0]:.6f}, {d.interval[1]:.6f}]"
            )
            tags["promotion.mcnemar_p_value"] = f"{d.p_value:.6g}"
        if decision.anchor_difference is not None:
            a = decision.anchor_difference
            tags["promotion.anchor_difference"] = f"{a.estimate:.6f}"
            tags["promotion.anchor_difference_interval"] = (
                f"[{a.interval[0]:.6f}, {a.interval[1]:.6f}]"
            )
        if decision.latency_ratio is not None:
            r = decision.latency_ratio
            tags["promotion.latency_ratio"] = f"{r.estimate:.4f}"
            tags["promotion.latency_ratio_interval"] = f"[{r.interval[0]:.4f}, {r.interval[1]:.4f}]"
        return tags

    @staticmethod
    def metrics(decision: Decision) -> dict[str, float]:
        metrics = {
            "promoted": float(decision.promote),
            "n_evaluated": float(decision.n_evaluated),
            "n_overlap_removed": float(decision.n_overlap_removed),
        }
        for side in ("challenger", "champion"):
            figures = getattr(decision, side)
            if figures:
                metrics[f"{side}_accuracy"] = figures["accuracy"]
                metrics[f"{side}_p50_ms"] = figures["p50_ms"]
        if decision.accuracy_difference is not None:
            metrics["accuracy_difference"] = decision.accuracy_difference.estimate
        if decision.latency_ratio is not None:
            metrics["latency_ratio"] = decision.latency_ratio.estimate
        return metrics

    def summary(self, ref: PromotionRef, work_dir: Path) -> list[str]:
        return [f"Promotion: {ref.reason}"]
