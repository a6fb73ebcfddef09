"""The pipeline's stages as Prefect tasks.

Each task opens its own MLflow child run (by id), calls components, logs what they
returned, and hands on a small reference: paths, hashes, ids, never a live model.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import onnx
import onnxruntime
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from components.augment import stream_seed
from components.benchmark import (
    Latency,
    benchmark_onnx,
    benchmark_torch,
    environment,
    report_json,
    report_markdown,
)
from components.checkpoint import load_checkpoint, save_checkpoint
from components.config import ModelConfig, PipelineConfig, TrainConfig, flatten
from components.data import DatasetInfo, load_dataset, prepare_dataset
from components.io import sha256_json, write_json, write_text
from components.logit_cache import CacheInfo, CacheSpec, build_logit_cache, open_logit_cache
from components.models import build_model, count_parameters
from components.onnx_export import ExportResult, export_onnx
from components.training import resolve_device, seed_everything, train_classifier
from flows.tracking import Tracker


class Ref(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunContext(Ref):
    """Where a pipeline run logs and writes: passed to every task."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    work_dir: str


class ModelRef(Ref):
    role: str  # teacher, student-baseline, student-kd
    arch: str
    checkpoint: str
    sha256: str
    parameters: int
    size_bytes: int
    test_accuracy: float
    run_id: str


class BenchmarkRef(Ref):
    json_path: str
    markdown_path: str
    results: list[dict]
    run_id: str


# --- data -------------------------------------------------------------------------------------


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(config: PipelineConfig, ctx: RunContext) -> DatasetInfo:
    info = prepare_dataset(config.data, config.split, Path(ctx.work_dir) / "data")
    tracker = Tracker(ctx.tracking_uri)
    tracker.set_tags(ctx.parent_run_id, {"dataset_fingerprint": info.fingerprint})
    tracker.log_params(
        ctx.parent_run_id,
        {
            "dataset.fingerprint": info.fingerprint,
            "dataset.num_classes": info.num_classes,
            "dataset.input_shape": [info.in_channels, *info.image_size],
            **{f"dataset.{name}_size": n for name, n in info.split_sizes.items()},
        },
    )
    get_run_logger().info(
        "dataset %s: %s images per split, fingerprint %s",
        config.data.kind,
        info.split_sizes,
        info.fingerprint,
    )
    return info


# --- training ---------------------------------------------------------------------------------


def _train(
    role: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    cache: CacheInfo | None,
) -> ModelRef:
    """Shared body of the three training stages; only the teacher's targets differ."""
    logger = get_run_logger()
    tracker = Tracker(ctx.tracking_uri)
    with tracker.child_run(ctx.experiment_id, ctx.parent_run_id, role) as run_id:
        device = resolve_device(config.device)
        dataset = load_dataset(data.path)
        seed_everything(config.seed)
        model = build_model(model_config.name, data.in_channels, data.num_classes)
        # The teacher itself is never loaded here: its knowledge arrives only as the cache.
        teacher_cache = (
            open_logit_cache(Path(cache.path), expected_key=cache.key)
            if cache is not None
            else None
        )
        distill = config.distill if cache is not None else None
        is_teacher = role == "teacher"
        params = {
            "role": role,
            "model.name": model_config.name,
            "model.parameters": count_parameters(model),
            "seed": config.seed,
            "device": str(device),
            "dataset.fingerprint": data.fingerprint,
            **flatten(train_config.model_dump(mode="json"), "train."),
        }
        if not is_teacher:
            params["cache.views"] = config.cache.views  # the view pool both students share
        if cache is not None and distill is not None:
            params |= {
                "cache.key": cache.key,
                **flatten(distill.model_dump(mode="json"), "distill."),
            }
        tracker.log_params(run_id, params)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            tracker.log_metrics(run_id, metrics, step=epoch)
            logger.info(
                "%s epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f",
                role,
                epoch,
                train_config.epochs,
                metrics["train_loss"],
                metrics["train_accuracy"],
                metrics["val_loss"],
                metrics["val_accuracy"],
            )

        result = train_classifier(
            model,
            dataset,
            train_config,
            seed=config.seed,
            device=device,
            # The teacher sees a fresh view every epoch; both students pick from the K views
            # the cache holds, so the control sees exactly the distilled student's inputs.
            view_seed=stream_seed(config.seed, "teacher-views") if is_teacher else config.seed,
            view_pool=None if is_teacher else config.cache.views,
            teacher_cache=teacher_cache,
            distill=distill,
            on_epoch=on_epoch,
            desc=role,
        )
        address = sha256_json(
            {
                "role": role,
                "model": model_config.model_dump(mode="json"),
                "train": train_config.model_dump(mode="json"),
                "distill": distill.model_dump(mode="json") if distill else None,
                "cache": cache.key if cache else None,
                "dataset": data.fingerprint,
                "seed": config.seed,
            }
        )[:16]
        checkpoint = Path(ctx.work_dir) / "models" / role / address / "model.pt"
        sha256 = save_checkpoint(
            checkpoint,
            model,
            arch=model_config.name,
            in_channels=data.in_channels,
            num_classes=data.num_classes,
            config=config.model_dump(mode="json"),
            metrics=result.final,
            dataset_fingerprint=data.fingerprint,
        )
        size = checkpoint.stat().st_size
        # val_* of the last epoch is already logged at its step; add the test figures.
        test_metrics = {k: v for k, v in result.final.items() if k.startswith("test_")}
        tracker.log_metrics(
            run_id, {**test_metrics, "checkpoint_bytes": size}, step=train_config.epochs
        )
        tracker.set_tags(run_id, {"checkpoint_sha256": sha256})
        tracker.log_artifact(run_id, checkpoint, "checkpoint")
        logger.info("%s: test accuracy %.4f", role, result.final["test_accuracy"])
        return ModelRef(
            role=role,
            arch=model_config.name,
            checkpoint=str(checkpoint),
            sha256=sha256,
            parameters=count_parameters(model),
            size_bytes=size,
            test_accuracy=result.final["test_accuracy"],
            run_id=run_id,
        )


@task(name="train-teacher", cache_policy=NO_CACHE)
def train_teacher(config: PipelineConfig, ctx: RunContext, data: DatasetInfo) -> ModelRef:
    return _train("teacher", config.teacher.model, config.teacher.train, config, ctx, data, None)


@task(name="train-student", cache_policy=NO_CACHE)
def train_student(
    config: PipelineConfig, ctx: RunContext, data: DatasetInfo, cache: CacheInfo | None
) -> ModelRef:
    """Without a cache: the label-only control (``student-baseline``); with one, ``student-kd``."""
    role = "student-kd" if cache is not None else "student-baseline"
    return _train(role, config.student.model, config.student.train, config, ctx, data, cache)


# --- logit cache ------------------------------------------------------------------------------


@task(name="cache-teacher-logits", cache_policy=NO_CACHE)
def cache_teacher_logits(
    config: PipelineConfig, ctx: RunContext, data: DatasetInfo, teacher: ModelRef
) -> CacheInfo:
    tracker = Tracker(ctx.tracking_uri)
    with tracker.child_run(ctx.experiment_id, ctx.parent_run_id, "logit-cache") as run_id:
        spec = CacheSpec.create(
            teacher.sha256,
            data.fingerprint,
            config.student.train.augment,
            config.seed,
            config.cache,
        )
        tracker.log_params(
            run_id,
            {
                "teacher.sha256": teacher.sha256,
                "teacher.run_id": teacher.run_id,
                "dataset.fingerprint": data.fingerprint,
                "view_seed": spec.view_seed,
                **flatten(config.cache.model_dump(mode="json"), "cache."),
                **flatten(spec.augment, "augment."),
            },
        )
        device = resolve_device(config.device)
        model, _ = load_checkpoint(Path(teacher.checkpoint), device, expected_sha256=teacher.sha256)
        started = time.perf_counter()
        info = build_logit_cache(
            model,
            spec,
            load_dataset(data.path),
            Path(ctx.work_dir) / "cache",
            config.cache.chunk_rows,
            device,
        )
        seconds = time.perf_counter() - started
        metrics = {
            "rows": info.rows,
            "views": info.views,
            "bytes_per_sample_view": info.bytes_per_sample_view,
            "cache_bytes": sum(p.stat().st_size for p in Path(info.path).glob("*.npy")),
            "seconds": seconds,
            "build_seconds": info.build_seconds,
        }
        if info.cache_hit:
            # The build's own time, recorded in the manifest, minus what verifying took now.
            metrics["time_saved_seconds"] = max(0.0, info.build_seconds - seconds)
        tracker.log_metrics(run_id, metrics)
        tracker.set_tags(
            run_id,
            {
                "cache_key": info.key,
                "cache_hit": str(info.cache_hit).lower(),
                "reused": str(info.cache_hit).lower(),
            },
        )
        tracker.log_artifact(run_id, Path(info.path) / "manifest.json")
        get_run_logger().info(
            "logit cache %s: %s (%d rows x %d views, %s, %d bytes per sample-view)",
            info.key,
            "reused (cache hit)" if info.cache_hit else "built",
            info.rows,
            info.views,
            info.storage,
            info.bytes_per_sample_view,
        )
        return info


# --- export and benchmark ---------------------------------------------------------------------


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_student_onnx(
    config: PipelineConfig, ctx: RunContext, data: DatasetInfo, student: ModelRef, teacher: ModelRef
) -> ExportResult:
    tracker = Tracker(ctx.tracking_uri)
    with tracker.child_run(ctx.experiment_id, ctx.parent_run_id, "onnx-export") as run_id:
        tracker.log_params(
            run_id,
            {
                "student.run_id": student.run_id,
                "student.sha256": student.sha256,
                **flatten(config.export.model_dump(mode="json"), "export."),
            },
        )
        model, _ = load_checkpoint(Path(student.checkpoint), "cpu", expected_sha256=student.sha256)
        metadata = {
            "class_labels": json.dumps(data.class_names),
            "input_shape": json.dumps(["batch", data.in_channels, *data.image_size]),
            "input_layout": "NCHW float32, pixels scaled to [0,1] then (x - mean) / std",
            "normalization_mean": json.dumps(data.mean),
            "normalization_std": json.dumps(data.std),
            "dataset_fingerprint": data.fingerprint,
            "teacher_run_id": teacher.run_id,
            "student_run_id": student.run_id,
            "student_test_accuracy": f"{student.test_accuracy:.6f}",
            "versions": json.dumps(
                {
                    "torch": torch.__version__,
                    "onnx": onnx.__version__,
                    "onnxruntime": onnxruntime.__version__,
                }
            ),
            "git_commit": _git_commit(),
        }
        path = Path(ctx.work_dir) / "onnx" / student.sha256[:16] / "model.onnx"
        result = export_onnx(model, load_dataset(data.path), path, config.export, metadata)
        tracker.log_metrics(
            run_id,
            {
                "max_abs_diff": result.max_abs_diff,
                "top1_agreement": result.top1_agreement,
                "torch_test_accuracy": result.torch_test_accuracy,
                "onnx_test_accuracy": result.onnx_test_accuracy,
                "model_bytes": result.size_bytes,
            },
        )
        tracker.set_tags(
            run_id,
            {"exporter": result.exporter, "opset": result.opset, "onnx_sha256": result.sha256},
        )
        tracker.log_dict(run_id, asdict(result), "parity.json")
        tracker.log_artifact(run_id, path, "onnx")
        get_run_logger().info(
            "ONNX (%s exporter, opset %d): max |diff| %.2e, top-1 agreement %.4f",
            result.exporter,
            result.opset,
            result.max_abs_diff,
            result.top1_agreement,
        )
        return result


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark(
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    models: list[ModelRef],
    exported: ExportResult,
    onnx_variant: str,
) -> BenchmarkRef:
    tracker = Tracker(ctx.tracking_uri)
    with tracker.child_run(ctx.experiment_id, ctx.parent_run_id, "benchmark") as run_id:
        tracker.log_params(run_id, flatten(config.benchmark.model_dump(mode="json"), "benchmark."))
        shape = (data.in_channels, *data.image_size)
        rows: list[Latency] = []
        for ref in models:
            model, _ = load_checkpoint(Path(ref.checkpoint), "cpu", expected_sha256=ref.sha256)
            rows += benchmark_torch(ref.role, model, shape, config.benchmark)
        rows += benchmark_onnx(onnx_variant, Path(exported.path), shape, config.benchmark)
        env = environment()
        out_dir = Path(ctx.work_dir) / "benchmarks" / ctx.parent_run_id
        json_path = write_json(out_dir / "benchmark.json", report_json(rows, env, config.benchmark))
        md_path = write_text(out_dir / "benchmark.md", report_markdown(rows, env))
        for r in rows:
            prefix = f"{r.variant}.{r.runtime}.batch{r.batch_size}"
            tracker.log_metrics(
                run_id,
                {
                    f"{prefix}.p50_ms": r.p50_ms,
                    f"{prefix}.p90_ms": r.p90_ms,
                    f"{prefix}.p99_ms": r.p99_ms,
                    f"{prefix}.throughput_per_s": r.throughput_per_s,
                },
            )
        tracker.set_tags(run_id, env)
        tracker.log_artifact(run_id, json_path)
        tracker.log_artifact(run_id, md_path)
        return BenchmarkRef(
            json_path=str(json_path),
            markdown_path=str(md_path),
            results=[asdict(r) for r in rows],
            run_id=run_id,
        )
