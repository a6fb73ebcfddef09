"""Distilling a teacher that was trained elsewhere: the warm store's trained teacher brought
back as a checkpoint, as an MLflow model and as an ONNX file gives the cache the same logits;
a torchvision architecture with its own input recipe and 1000 classes is mapped onto the
dataset's; bad sources stop before any work. Real MLflow store, real Prefect server."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from prefect import flow

from components.checkpoint import load_checkpoint
from components.config import ExportConfig, PipelineConfig, load_config
from components.data import load_dataset
from components.logit_cache import open_logit_cache
from components.models import build_model
from components.onnx_export import export_metadata, export_onnx
from components.teachers import InputSpec, prepare
from flows.cli import main
from flows.pipeline import PIPELINE, PipelineResult, run_pipeline
from flows.refs import CacheRef, ModelRef
from tests.conftest import RICH_OVERRIDES
from tests.flows.conftest import Store
from tests.helpers import one, pipeline_runs, run_args

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# What a teacher from elsewhere feeds: the data, its teacher, its cache.
UPSTREAM = tuple(s for s in PIPELINE if s.name in {"prepare-data", "teacher", "logit-cache"})


@flow(name="kd-teacher-and-cache")
def teacher_and_cache(config: PipelineConfig) -> PipelineResult:
    return run_pipeline(config, None, UPSTREAM)


def bring(store: Store, *overrides: str) -> tuple[ModelRef, CacheRef]:
    config = load_config(None, [*RICH_OVERRIDES, f"work_dir={store.work}", *overrides])
    result = teacher_and_cache(config)
    teacher, cache = result.refs["teacher"], result.refs["logit-cache"]
    assert isinstance(teacher, ModelRef) and isinstance(cache, CacheRef)
    return teacher, cache


def cached_logits(store: Store, cache: CacheRef) -> np.ndarray:
    return np.asarray(cache.open(store.work).arrays["logits"], dtype=np.float32)


def test_a_checkpoint_an_mlflow_model_and_an_onnx_file_give_the_same_cache(
    warm_store: Store, tmp_path: Path
) -> None:
    work = warm_store.work
    trained_file = one((work / "teacher").glob("*/model.pt"))
    trained, _ = load_checkpoint(trained_file)
    ((_, first),) = pipeline_runs(warm_store.client)
    reference_key = first["logit-cache"].data.tags["cache_key"]
    reference = np.asarray(
        open_logit_cache(work / "logit-cache" / reference_key).arrays["logits"], np.float32
    )
    trained_accuracy = first["teacher"].data.metrics["test_accuracy"]

    # 1. this pipeline's checkpoint: copied byte for byte, so it is the very same cache
    teacher, cache = bring(warm_store, f"teacher.source={{kind: checkpoint, path: {trained_file}}}")
    assert teacher.format == "checkpoint" and teacher.input_spec is None  # the data's own
    assert cache.info.key == reference_key  # the teacher's identity is unchanged: reused
    assert np.array_equal(cached_logits(warm_store, cache), reference)
    assert teacher.test_accuracy == pytest.approx(trained_accuracy, abs=1e-6)

    # 2. logged to MLflow as a PyTorch model, registered, and read back by its models:/ URI
    with mlflow.start_run(experiment_id=first["teacher"].info.experiment_id) as run:
        mlflow.pytorch.log_model(
            trained,
            name="teacher",
            registered_model_name="kd-teacher",
            input_example=np.zeros((2, 1, 28, 28), np.float32),
            pip_requirements=["torch"],
        )
    teacher, cache = bring(warm_store, "teacher.source={kind: mlflow, uri: models:/kd-teacher/1}")
    assert teacher.format == "exported"
    # float16 storage: agreement within its rounding of logits of this size
    assert np.allclose(cached_logits(warm_store, cache), reference, atol=2e-2, rtol=1e-2)
    assert run.info.run_id  # the logged model's run exists in the store

    # 3. exported to ONNX (the pipeline's own exporter) and run by ONNX Runtime
    dataset = load_dataset(one((work / "prepare-data").iterdir()))
    onnx_path = tmp_path / "teacher.onnx"
    metadata = export_metadata(dataset.info, {})
    export_onnx(trained, dataset, onnx_path, ExportConfig(int8=False), metadata)
    teacher, cache = bring(warm_store, f"teacher.source={{kind: onnx, path: {onnx_path}}}")
    assert teacher.format == "onnx"
    assert np.allclose(cached_logits(warm_store, cache), reference, atol=2e-2, rtol=1e-2)
    assert teacher.test_accuracy == pytest.approx(trained_accuracy, abs=0.004)  # ORT rounding

    # each brought-in teacher has its own MLflow run: evaluated, not trained
    _, *brought = pipeline_runs(warm_store.client)
    sources = [children["teacher"].data.tags["teacher_source"] for _, children in brought]
    assert sources == ["checkpoint", "mlflow", "onnx"]
    for _, children in brought:
        run_ = children["teacher"]
        assert {"val_accuracy", "test_accuracy"} <= set(run_.data.metrics)
        assert "train_loss" not in run_.data.metrics
        assert len(run_.data.tags["checkpoint_sha256"]) == 64


def test_a_torchvision_teacher_with_its_own_input_recipe_and_class_map(
    warm_store: Store, tmp_path: Path
) -> None:
    # given torchvision's MobileNetV3 as torchvision builds it (3 channels, 1000 classes) with
    # a weights file of its own, trained on 32 px images with ImageNet statistics
    torch.manual_seed(0)
    model = build_model("torchvision:mobilenet_v3_small", 3, 1000, native=True).eval()
    weights = tmp_path / "mobilenet.pt"
    torch.save(model.state_dict(), weights)
    imagenet = (
        "{image_size: 32, channels: 3, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"
    )
    # digit d -> output 100 + d
    mapping = "{" + ", ".join(f"'{d}': {100 + d}" for d in range(10)) + "}"
    teacher, cache = bring(
        warm_store,
        f"teacher.source={{kind: torchvision, name: mobilenet_v3_small, weights: {weights}}}",
        f"teacher.input={imagenet}",
        f"teacher.class_map={mapping}",
    )
    assert teacher.class_index == list(range(100, 110))
    assert teacher.input_spec == {
        "channels": 3,
        "image_size": [32, 32],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    # then the cache holds, for the dataset's classes, the teacher's outputs on the student's
    # own augmented view, grey 28 px digits made 3-channel 32 px with ImageNet statistics
    from components.augment import augment
    from components.config import AugmentConfig

    dataset = load_dataset(one((warm_store.work / "prepare-data").iterdir()))
    rows, views = np.array([0, 17, 3999]), np.array([1, 0, 1])
    sample_ids = dataset.splits["train"][rows]
    config = load_config(None, list(RICH_OVERRIDES))
    pixels = augment(
        torch.as_tensor(dataset.images[sample_ids]),
        AugmentConfig(**config.student.train.augment.model_dump()),
        config.seed,
        sample_ids,
        views,
    )
    spec = InputSpec.from_dict(teacher.input_spec)
    with torch.no_grad():
        expected = model(prepare(pixels, spec))[:, 100:110]
    logits = cache.open(warm_store.work).logits(rows, views)
    assert logits.shape == (3, 10)
    assert torch.allclose(logits, expected, atol=2e-2, rtol=1e-2)
    # and the recipe is on record: in the cache key's spec and the teacher's run
    manifest = json.loads((warm_store.work / cache.info.path / "manifest.json").read_text())
    assert manifest["spec"]["teacher_input"] == teacher.input_spec
    assert manifest["spec"]["class_index"] == list(range(100, 110))


def test_bad_teacher_sources_stop_before_any_work(
    warm_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trained, _ = load_checkpoint(one((warm_store.work / "teacher").glob("*/model.pt")))
    plain = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), plain)  # cnn_small weights, no architecture inside
    twelve = tmp_path / "twelve.pt"
    torch.save(build_model("cnn_tiny", 1, 12).state_dict(), twelve)
    rgb = tmp_path / "rgb.pt"  # torchvision's, trained on 3-channel images: not the data's
    torch.save(build_model("torchvision:mobilenet_v3_small", 3, 10, native=True).state_dict(), rgb)
    cases = {
        "missing file": (
            f"teacher.source={{kind: checkpoint, path: {tmp_path / 'absent.pt'}}}",
            "does not exist",
        ),
        "URI that does not resolve": (
            "teacher.source={kind: mlflow, uri: models:/no-such-model/1}",
            "MLflow cannot resolve it",
        ),
        "wrong architecture for the weights": (
            f"teacher.source={{kind: checkpoint, path: {plain}, arch: resnet_small}}",
            "do not fit that architecture",
        ),
        "class mismatch": (
            f"teacher.source={{kind: checkpoint, path: {twelve}, arch: cnn_tiny}}",
            "(12 unnamed outputs) are not the dataset's (['0', '1', '2'",
        ),
        "a teacher trained on other inputs, without teacher.input": (
            f"teacher.source={{kind: torchvision, name: mobilenet_v3_small, weights: {rgb}}}",
            "cannot take the data's images as 1x28x28",
        ),
    }
    before = sorted(p.relative_to(warm_store.root) for p in warm_store.root.rglob("*"))
    for case, (override, message) in cases.items():
        assert main(run_args(warm_store.work, override)) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("kd: teacher.source"), (
            case,
            err,
        )
        if "other inputs" in case:
            assert "set teacher.input" in err[0]  # the keys that fix it
    after = sorted(p.relative_to(warm_store.root) for p in warm_store.root.rglob("*"))
    assert after == before  # nothing written: no run, no file
