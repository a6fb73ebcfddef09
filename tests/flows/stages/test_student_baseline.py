"""The control alone: it trains the one recipe ``student.baseline`` names, and records it and
where it was chosen."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from flows.refs import ModelRef
from tests.flows.stages.harness import StageHarness, stage


def test_the_control_trains_its_recipe_and_says_where_it_was_chosen(
    staged: tuple[StageHarness, Path],
) -> None:
    harness, images = staged
    overrides = (
        "student.baseline.views=fresh",
        "student.baseline.label_smoothing=0.1",
        "student.baseline.chosen_by=a test",
    )
    outcome = harness.run(stage("student-baseline"), harness.config(images, *overrides))
    assert isinstance(outcome.ref, ModelRef)
    params = MlflowClient(harness.pipeline.tracking_uri).get_run(outcome.ref.run_id).data.params
    assert params["control.recipe"] == "fresh-ls0.1" and params["control.chosen_by"] == "a test"
    assert params["views"] == "fresh" and params["label_smoothing"] == "0.1"
    # where the recipe was chosen does not change the control: not in its fingerprint
    config = harness.config(images, *overrides[:2], "student.baseline.chosen_by=elsewhere")
    again = stage("student-baseline").fingerprint(
        config, {"prepare-data": harness.refs["prepare-data"]}
    )
    assert outcome.ref.run_id and again == stage("student-baseline").fingerprint(
        harness.config(images, *overrides), {"prepare-data": harness.refs["prepare-data"]}
    )
