"""The teacher stage alone: a teacher from elsewhere is brought in, checked against the data
through its class map, evaluated, and handed on as the cache reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from mlflow.tracking import MlflowClient

from components.checkpoint import load_checkpoint
from components.io import sha256_file
from components.teachers import InputSpec
from flows.refs import ModelRef
from tests.flows.stages.harness import StageHarness, stage
from tests.helpers import quadrant_images


def _bring(harness: StageHarness, images: Path, *overrides: str) -> tuple[ModelRef, dict]:
    outcome = harness.run(stage("teacher"), harness.config(images, *overrides))
    assert isinstance(outcome.ref, ModelRef)
    run = MlflowClient(harness.pipeline.tracking_uri).get_run(outcome.ref.run_id)
    return outcome.ref, {**run.data.params, **run.data.tags}


def test_a_checkpoint_is_brought_in_byte_for_byte_and_evaluated(
    staged: tuple[StageHarness, Path],
) -> None:
    harness, images = staged
    trained = harness.work / harness.refs["teacher"].checkpoint
    ref, logged = _bring(harness, images, f"teacher.source={{kind: checkpoint, path: {trained}}}")
    assert ref.format == "checkpoint" and ref.sha256 == sha256_file(trained)
    assert ref.input_spec is None and ref.class_index is None  # the data's own, in order
    assert ref.test_accuracy == harness.refs["teacher"].test_accuracy
    assert logged["teacher_source"] == "checkpoint" and logged["teacher.origin"] == str(trained)


def test_an_onnx_teacher_with_other_classes_is_mapped_onto_the_data(
    staged: tuple[StageHarness, Path], tmp_path: Path
) -> None:
    harness, images = staged
    # the trained teacher, exported with its outputs reversed and named so
    model, _ = load_checkpoint(harness.work / harness.refs["teacher"].checkpoint)
    reversed_model = torch.nn.Sequential(model, _Reverse()).eval()
    path = tmp_path / "reversed.onnx"
    torch.onnx.export(
        reversed_model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
        dynamo=False,
    )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "class_labels", json.dumps(["c3", "c2", "c1", "c0"])
    onnx.save(proto, str(path))
    source = f"teacher.source={{kind: onnx, path: {path}}}"
    by_name = "teacher.class_map={c0: c0, c1: c1, c2: c2, c3: c3}"
    ref, logged = _bring(harness, images, source, by_name)
    # the map names the teacher's classes: their outputs, read off its metadata
    assert ref.format == "onnx" and ref.class_index == [3, 2, 1, 0]
    assert abs(ref.test_accuracy - harness.refs["teacher"].test_accuracy) <= 0.02
    assert logged["model.runtime"] == "onnxruntime"


class _Reverse(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1)


def test_an_onnx_teacher_as_torch_exports_it_by_default_feeds_the_cache_and_is_timed(
    staged: tuple[StageHarness, Path], tmp_path: Path
) -> None:
    harness, images = staged
    model, _ = load_checkpoint(harness.work / harness.refs["teacher"].checkpoint)
    exported = tmp_path / "teacher.onnx"  # weights in teacher.onnx.data, batch fixed at 1
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(exported))
    assert (tmp_path / "teacher.onnx.data").is_file()
    ref, _ = _bring(harness, images, f"teacher.source={{kind: onnx, path: {exported}}}")
    assert ref.format == "onnx" and len(ref.extra_files) == 1
    assert ref.verify(harness.work) is None
    assert abs(ref.test_accuracy - harness.refs["teacher"].test_accuracy) <= 0.02
    # the cache holds its logits for every view, in batches its fixed size does not take
    config = harness.config(images, f"teacher.source={{kind: onnx, path: {exported}}}")
    trained = harness.refs["logit-cache"]  # the cache of the teacher trained here
    cache = harness.run(stage("logit-cache"), config).ref
    assert cache.info.key != trained.info.key
    ours = np.asarray(cache.open(harness.work).arrays["logits"], np.float32)
    assert ours.shape == np.asarray(trained.open(harness.work).arrays["logits"]).shape
    # and the benchmark times it at the batch size it takes
    results = harness.run(stage("benchmark"), config).ref.results
    assert {r["batch_size"] for r in results if r["variant"] == "teacher"} == {1}
    # new external data is a new teacher: the cached reference no longer verifies
    data = harness.work / ref.extra_files[0]
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    assert "changed since it was cached" in (ref.verify(harness.work) or "")


def test_a_kept_teacher_is_brought_in_on_grown_data_and_evaluated_on_it(
    staged: tuple[StageHarness, Path],
) -> None:
    harness, images = staged
    trained = harness.refs["teacher"]
    assert isinstance(trained, ModelRef)
    old_data = harness.refs["prepare-data"]
    # new images arrive: the data (and its splits) change
    quadrant_images(images, per_class=10, start=40)
    harness.run(stage("prepare-data"), harness.config(images))
    assert harness.refs["prepare-data"].identity() != old_data.identity()

    # teacher.retrain=never: the teacher trained before is kept, byte for byte, and evaluated
    # on the new splits
    kept, logged = _bring(harness, images, "teacher.retrain=never")
    assert kept.sha256 == trained.sha256 and kept.checkpoint != trained.checkpoint
    assert logged["teacher_kept_from_run"] == trained.run_id
    assert logged["dataset.fingerprint"] == harness.refs["prepare-data"].identity()
    assert 0 <= kept.val_accuracy <= 1
    # fed as it learned: the first data's statistics, not the grown data's
    assert kept.input_spec == InputSpec.of_data(old_data.load(harness.work).info).as_dict()

    # another recipe is another teacher: trained, and it becomes the one kept from then on
    retrained, logged = _bring(harness, images, "teacher.retrain=never", "teacher.train.epochs=2")
    assert retrained.sha256 != trained.sha256 and "teacher_kept_from_run" not in logged
    last = json.loads((harness.work / "teacher" / "last-trained.json").read_text())
    assert last["sha256"] == retrained.sha256 and last["run_id"] == retrained.run_id
