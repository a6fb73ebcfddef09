"""``promotion``: the new model (challenger) against the registered champion.

Both are fetched as ONNX models (the champion through the registry, wherever it lives),
scored now on this run's test split (components/promotion.py), and the champion alias moves
only when the policy says so. The decision is recorded on both model versions, on the parent
run and as ``promotion.md`` / ``promotion.json``; a rejected challenger keeps its alias.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from components.config import PipelineConfig
from components.promotion import (
    Decision,
    IncomparableError,
    decide,
    decision_markdown,
    incomparable,
    score_models,
)
from flows.stage import Outcome, Record, Ref, Stage, StageContext
from flows.stages.handoff import Handoff, HandoffRef
from flows.stages.onnx_export import OnnxExport, OnnxRef
from flows.stages.prepare_data import DataRef, PrepareData


class PromotionRef(Ref):
    promoted: bool
    reason: str
    model_name: str
    challenger_version: str
    champion_version_before: str | None
    champion_version_after: str | None
    markdown: str


def _find_onnx(directory: Path) -> Path:
    models = sorted(directory.rglob("*.onnx"))
    if not models:
        raise FileNotFoundError(f"{directory}: the registered model holds no .onnx file")
    return models[0]


class Promotion(Stage[PromotionRef]):
    name = "promotion"
    output = PromotionRef
    reads = ("promotion",)
    needs = (PrepareData, OnnxExport, Handoff)
    cached = False

    def enabled(self, config: PipelineConfig) -> bool:
        return config.promotion.enabled

    def run(self, ctx: StageContext) -> Outcome[PromotionRef]:
        policy = ctx.config.promotion
        tracker = ctx.tracker
        handoff = ctx.input(Handoff, HandoffRef)
        dataset = ctx.input(PrepareData, DataRef).load(ctx.work_dir)
        challenger_path = ctx.work_dir / ctx.input(OnnxExport, OnnxRef).export.path
        name = handoff.model_name
        before = tracker.alias_version(name, policy.champion_alias)
        with tempfile.TemporaryDirectory() as scratch:
            decision: Decision
            if before is None:
                scores = score_models({"challenger": challenger_path}, dataset, policy)
                decision = decide(scores["challenger"], None, policy)
            else:
                champion_path = _find_onnx(tracker.download_version(name, before, Path(scratch)))
                try:
                    scores = score_models(
                        {"challenger": challenger_path, "champion": champion_path},
                        dataset,
                        policy,
                    )
                    decision = decide(scores["challenger"], scores["champion"], policy)
                except IncomparableError as err:
                    scores = score_models({"challenger": challenger_path}, dataset, policy)
                    decision = incomparable(scores["challenger"], str(err), policy)

        if decision.promote:
            tracker.set_alias(name, policy.champion_alias, handoff.version)
        after = handoff.version if decision.promote else before
        outcome = "promoted" if decision.promote else "rejected"
        common = {
            "promotion.decision": outcome,
            "promotion.reason": decision.reason,
            "promotion.policy": json.dumps(decision.policy, sort_keys=True),
            "promotion.pipeline_run_id": ctx.pipeline.parent_run_id,
            "promotion.challenger_version": handoff.version,
            "promotion.champion_version": before or "none",
            "promotion.challenger_accuracy": f"{decision.challenger.accuracy:.6f}",
            "promotion.challenger_p50_ms": f"{decision.challenger.p50_ms:.6f}",
        }
        if decision.champion is not None:
            common |= {
                "promotion.champion_accuracy": f"{decision.champion.accuracy:.6f}",
                "promotion.champion_p50_ms": f"{decision.champion.p50_ms:.6f}",
            }
        tracker.set_version_tags(name, handoff.version, common)
        if before is not None:
            # The champion keeps its own promotion record; the challenge goes beside it.
            tracker.set_version_tags(
                name,
                before,
                {k.replace("promotion.", "last_challenge.", 1): v for k, v in common.items()},
            )
        metrics = {
            "challenger_accuracy": decision.challenger.accuracy,
            "challenger_p50_ms": decision.challenger.p50_ms,
            "promoted": float(decision.promote),
        }
        if decision.champion is not None and decision.latency_ratio is not None:
            metrics |= {
                "champion_accuracy": decision.champion.accuracy,
                "champion_p50_ms": decision.champion.p50_ms,
                "accuracy_drop": decision.accuracy_drop or 0.0,
                "latency_ratio": decision.latency_ratio,
            }
        markdown = decision_markdown(decision, name, handoff.version, before)
        record = {**decision.as_dict(), "challenger_version": handoff.version}
        record["champion_version"] = before
        texts: dict[str, str | dict[str, Any]] = {
            "promotion.md": markdown,
            "promotion.json": record,
        }
        ctx.log.info(
            "%s version %s %s (@%s now on version %s): %s",
            name,
            handoff.version,
            outcome,
            policy.champion_alias,
            after or "none",
            decision.reason,
        )
        ref = PromotionRef(
            promoted=decision.promote,
            reason=decision.reason,
            model_name=name,
            challenger_version=handoff.version,
            champion_version_before=before,
            champion_version_after=after,
            markdown=markdown,
        )
        return Outcome(
            ref,
            Record(metrics=metrics, tags=common, texts=texts),
            parent=Record(tags=common, texts=texts),
        )

    def summary(self, ref: PromotionRef, work_dir: Path) -> list[str]:
        return [f"Promotion: {ref.reason}"]
