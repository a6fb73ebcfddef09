"""The promotion stage: the new model (challenger) against the registered champion.

Both are fetched as ONNX models (the champion through the registry, wherever it lives),
scored now on this run's test split, and the champion alias moves only when the policy
says so. The decision is recorded on both model versions, on the parent run and as
``promotion.md``; a rejected challenger keeps its ``challenger`` alias.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from components.config import PipelineConfig, flatten
from components.data import DatasetInfo, load_dataset
from components.promotion import (
    Decision,
    IncomparableError,
    decide,
    decision_markdown,
    incomparable,
    score_models,
)
from flows.tasks import HandoffRef, OnnxRef, Ref, RunContext
from flows.tracking import Tracker


class PromotionRef(Ref):
    promoted: bool
    reason: str
    model_name: str
    challenger_version: str
    champion_version_before: str | None
    champion_version_after: str | None
    decision: dict
    markdown: str
    run_id: str


def _find_onnx(directory: Path) -> Path:
    models = sorted(directory.rglob("*.onnx"))
    if not models:
        raise FileNotFoundError(f"{directory}: the registered model holds no .onnx file")
    return models[0]


@task(name="promote", cache_policy=NO_CACHE)
def promote(
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    exported: OnnxRef,
    handoff: HandoffRef,
) -> PromotionRef:
    policy = config.promotion
    name = handoff.model_name
    tracker = Tracker(ctx.tracking_uri)
    with tracker.child_run(ctx.experiment_id, ctx.parent_run_id, "promotion") as run_id:
        tracker.log_params(run_id, flatten(policy.model_dump(mode="json"), "promotion."))
        champion = tracker.version_by_alias(name, policy.champion_alias)
        dataset = load_dataset(data.path)
        challenger_path = Path(exported.export.path)
        with tempfile.TemporaryDirectory() as scratch:
            decision: Decision
            if champion is None:
                scores = score_models({"challenger": challenger_path}, dataset, policy)
                decision = decide(scores["challenger"], None, policy)
            else:
                champion_path = _find_onnx(
                    tracker.download_version(name, str(champion.version), Path(scratch))
                )
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

        before = str(champion.version) if champion is not None else None
        if decision.promote:
            tracker.set_alias(name, policy.champion_alias, handoff.version)
        after = handoff.version if decision.promote else before
        outcome = "promoted" if decision.promote else "rejected"
        common = {
            "promotion.decision": outcome,
            "promotion.reason": decision.reason,
            "promotion.policy": json.dumps(decision.policy, sort_keys=True),
            "promotion.pipeline_run_id": ctx.parent_run_id,
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
        tracker.set_tags(ctx.parent_run_id, common)
        tracker.set_tags(run_id, common)
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
        tracker.log_metrics(run_id, metrics)
        markdown = decision_markdown(decision, name, handoff.version, before)
        record = {**decision.as_dict(), "challenger_version": handoff.version}
        record["champion_version"] = before
        for target in (run_id, ctx.parent_run_id):
            tracker.log_text(target, markdown, "promotion.md")
            tracker.log_dict(target, record, "promotion.json")
        get_run_logger().info(
            "%s version %s %s (@%s now on version %s): %s",
            name,
            handoff.version,
            outcome,
            policy.champion_alias,
            after or "none",
            decision.reason,
        )
        return PromotionRef(
            promoted=decision.promote,
            reason=decision.reason,
            model_name=name,
            challenger_version=handoff.version,
            champion_version_before=before,
            champion_version_after=after,
            decision=record,
            markdown=markdown,
            run_id=run_id,
        )
