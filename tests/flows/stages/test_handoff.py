"""The handoff stage alone: its three jobs (the INT8 decision, the bundle, the registration)
on tiny upstream artifacts, without a pipeline run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from mlflow.tracking import MlflowClient

from components.calibration import softmax
from components.predict import Bundle, self_check
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


@pytest.mark.parametrize(
    ("floor", "named"),
    [
        # below an absolute floor on validation
        ("registry.min_val_accuracy=1.0", "below registry.min_val_accuracy 1.0000"),
        # not better than its own label-only control on validation by the margin asked
        ("registry.min_gain_over_control=0.5", "below registry.min_gain_over_control +0.5000"),
    ],
)
def test_a_model_below_a_floor_is_handed_off_but_not_registered(
    staged: tuple[StageHarness, Path], floor: str, named: str
) -> None:
    harness, images = staged
    ref = _handoff(harness, images, floor)
    assert not ref.registered and ref.version is None
    assert named in ref.registration
    assert ref.refusal() == ref.registration  # the run ends with the refused exit code
    assert (harness.work / ref.bundle / "model.onnx").is_file()
    card = (harness.work / ref.bundle / "MODEL_CARD.md").read_text()
    assert card.startswith("> **REFUSED: do not deploy.**")
    client = MlflowClient(harness.pipeline.tracking_uri)
    assert not client.search_registered_models(f"name = '{ref.model_name}'")
    run = client.get_run(harness.refs["handoff"].run_id)
    assert "model_version" not in run.data.tags and named in run.data.tags["registration"]


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


def test_the_bundle_carries_the_temperature_fitted_on_validation(
    staged: tuple[StageHarness, Path],
) -> None:
    harness, images = staged
    outcome = harness.run(stage("handoff"), harness.config(images))
    bundle = harness.work / outcome.ref.bundle
    prep = json.loads((bundle / "preprocessing.json").read_text())
    calibration = outcome.record.texts["calibration.json"]
    assert prep["temperature"] == calibration["temperature"] > 0
    assert set(prep["calibration"]) >= {"ece_val_before", "ece_val_after", "ece_test_after"}
    sizes = harness.refs["prepare-data"].split_sizes
    assert (calibration["val_n"], calibration["test_n"]) == (sizes["val"], sizes["test"])
    metadata = {p.key: p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props}
    assert float(metadata["temperature"]) == pytest.approx(prep["temperature"], rel=1e-5)
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Calibration" in card and "![reliability diagram](reliability.png)" in card
    assert (bundle / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # kd predict reports probabilities at that temperature; the class is unchanged
    loaded = Bundle(bundle)
    files = sorted((bundle / "self_check").glob("*.png"))[:3]
    logits = loaded.logits(np.stack([loaded.preprocess(f) for f in files]))
    expected = softmax(logits, prep["temperature"])
    for prediction, row in zip(loaded.classify(files, top_k=1), expected, strict=True):
        assert prediction.top[0][1] == pytest.approx(row.max(), rel=1e-5)
    assert self_check(bundle).passed  # the test vector's raw logits are unchanged
