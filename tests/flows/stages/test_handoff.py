"""The handoff stage alone: its three jobs (the INT8 decision, the bundle, the registration)
on tiny upstream artifacts, without a pipeline run."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from flows.refs import HandoffRef
from tests.flows.stages.harness import StageHarness, new_parent, stage


def _handoff(harness: StageHarness, images: Path, *overrides: str) -> HandoffRef:
    outcome = harness.run(stage("handoff"), harness.config(images, *overrides))
    assert isinstance(outcome.ref, HandoffRef)
    return outcome.ref


def test_a_new_model_is_registered_and_the_same_bytes_are_not_registered_twice(
    staged: tuple[StageHarness, Path],
) -> None:
    harness, images = staged
    first = _handoff(harness, images)
    assert first.registered and first.version == "1" and first.alias == "challenger"
    assert first.refusal() is None
    client = MlflowClient(harness.pipeline.tracking_uri)
    version = client.get_model_version_by_alias(first.model_name, "challenger")
    assert str(version.version) == "1" and version.description.startswith("# ")
    assert (harness.work / first.bundle / "model.onnx").is_file()
    assert (harness.work / first.bundle / "MODEL_CARD.md").is_file()
    # a second pipeline run hands off the very same ONNX bytes: its bundle, no new version
    again = _handoff(new_parent(harness), images)
    assert not again.registered and again.version == "1"
    assert "byte-identical to version 1" in again.registration
    assert (harness.work / again.bundle).is_dir() and again.bundle != first.bundle
    assert len(client.search_model_versions(f"name = '{first.model_name}'")) == 1


def test_a_model_below_a_floor_is_handed_off_but_not_registered(
    staged: tuple[StageHarness, Path],
) -> None:
    harness, images = staged
    ref = _handoff(harness, images, "registry.min_val_accuracy=1.0")
    assert not ref.registered and ref.version is None
    assert "below registry.min_val_accuracy" in ref.registration
    assert ref.refusal() == ref.registration  # the run ends with the refused exit code
    assert (harness.work / ref.bundle / "model.onnx").is_file()
    card = (harness.work / ref.bundle / "MODEL_CARD.md").read_text()
    assert card.startswith("> **REFUSED: do not deploy.**")
    client = MlflowClient(harness.pipeline.tracking_uri)
    assert not client.search_registered_models(f"name = '{ref.model_name}'")


def test_int8_that_is_not_faster_by_the_margin_stays_out_of_the_bundle(
    staged: tuple[StageHarness, Path],
) -> None:
    harness, images = staged
    # an INT8 twin exists upstream; no CPU makes it 99% faster
    ref = _handoff(harness, images, "export.int8_latency_margin=0.99")
    assert not ref.int8_kept and ref.int8_reason.startswith("dropped:")
    assert not (harness.work / ref.bundle / "model.int8.onnx").exists()
    run = MlflowClient(harness.pipeline.tracking_uri).get_run(harness.refs["handoff"].run_id)
    assert run.data.tags["int8"] == ref.int8_reason
