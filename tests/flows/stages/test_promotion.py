"""The promotion stage alone: the chain of champions on one split version, each challenger
judged against the champion and against the chain's first champion (the anchor), on tiny
upstream artifacts without a pipeline run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from flows.refs import HandoffRef, PromotionRef
from flows.tracking.fluent import fluent_tracking_uri
from tests.flows.stages.harness import StageHarness, new_parent, stage

# The tiny folder has 16 validation images: decide on them, with a margin every copy passes.
DECIDABLE = ("promotion.min_examples=1", "promotion.max_accuracy_drop=1.0")
DECISION_TAGS = ("promotion.", "last_challenge.")  # what a judgement writes, not a handoff


def _register_again(harness: StageHarness) -> None:
    """Another registered version of the model files, as a later run's would be."""
    handoff = harness.refs["handoff"]
    assert isinstance(handoff, HandoffRef) and handoff.version is not None
    client = MlflowClient(harness.pipeline.tracking_uri)
    first = client.get_model_version(handoff.model_name, handoff.version)
    with fluent_tracking_uri(harness.pipeline.tracking_uri):  # resolves models:/<id>
        new = client.create_model_version(
            handoff.model_name,
            first.source,
            first.run_id,
            tags={k: v for k, v in first.tags.items() if not k.startswith(DECISION_TAGS)},
            model_id=first.model_id,
        )
    harness.refs["handoff"] = handoff.model_copy(update={"version": str(new.version)})


def _promote(harness: StageHarness, images: Path, *overrides: str) -> dict[str, Any]:
    outcome = harness.run(stage("promotion"), harness.config(images, *DECIDABLE, *overrides))
    assert isinstance(outcome.ref, PromotionRef)
    record = outcome.record.texts["promotion.json"]
    assert isinstance(record, dict)
    return record


def test_a_chain_of_champions_is_judged_against_its_first_champion_too(
    staged: tuple[StageHarness, Path],
) -> None:
    harness, images = staged
    harness.run(stage("handoff"), harness.config(images))
    name = harness.refs["handoff"].model_name  # type: ignore[attr-defined]
    client = MlflowClient(harness.pipeline.tracking_uri)

    def tags(version: str) -> dict[str, str]:
        return dict(client.get_model_version(name, version).tags)

    # version 1: the first champion of this split version, its own anchor
    assert _promote(harness, images)["decision"] == "promoted"
    split = tags("1")["promotion.split_version"]
    assert split.startswith("content-hash-") and tags("1")["promotion.anchor_version"] == "1"

    # version 2 against champion 1, which is the anchor: one comparison
    second = new_parent(harness)
    _register_again(second)
    record = _promote(second, images)
    assert record["decision"] == "promoted" and record["champion_version"] == "1"
    assert record["anchor_version"] is None and record["anchor_difference"] is None
    assert tags("2")["promotion.anchor_version"] == "1"

    # version 3 against champion 2 and against the anchor, version 1, scored now as well
    third = new_parent(second)
    _register_again(third)
    record = _promote(third, images)
    assert record["decision"] == "promoted" and record["champion_version"] == "2", record["reason"]
    assert record["anchor_version"] == "1"
    assert record["anchor_difference"]["estimate"] == 0  # the same files
    assert record["anchor_difference"]["n"] == record["n_evaluated"]
    assert tags("3")["promotion.anchor_version"] == "1"
    assert tags("3")["promotion.anchor_difference_interval"].startswith("[-")
    assert tags("2")["promotion.anchor_version"] == "1"  # the old champion keeps its record

    # a new split version starts a new chain: no anchor judged, the new champion is its own
    fourth = new_parent(third)
    _register_again(fourth)
    record = _promote(fourth, images, "split.seed=1")
    assert record["decision"] == "promoted" and record["anchor_difference"] is None
    assert tags("4")["promotion.anchor_version"] == "4"
    assert tags("4")["promotion.split_version"] != split
