"""The pipeline's stages as Prefect tasks.

Each task opens its own MLflow child run (by id), calls components, logs what they
returned, and hands on a small reference: paths, hashes, ids, never a live model.

The expensive stages are cached by Prefect under ``<stage>-<fingerprint>``: the fingerprint
hashes everything the stage reads (dataset fingerprint, configs, upstream weight hashes),
never the run id, so a rerun with unchanged inputs gets the earlier reference back without
running the stage. The same fingerprint addresses the stage's files on disk. References are
stored as JSON, never pickled.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow.onnx
import numpy as np
import onnx
import onnxruntime
import torch
from mlflow.models import infer_signature
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict

from components.augment import stream_seed
from components.benchmark import (
    cpu_info,
    latency_chart,
    measure_inference,
    p50_of,
    report_markdown,
)
from components.checkpoint import load_checkpoint, save_checkpoint
from components.config import DistillConfig, ModelConfig, PipelineConfig, TrainConfig, flatten
from components.data import DatasetInfo, load_dataset, normalize, prepare_dataset
from components.distributed import (
    join_process_group,
    launch,
    leave_process_group,
    rank_and_world,
    worker_device,
)
from components.handoff import model_card, write_bundle
from components.io import sha256_file, sha256_json, write_json, write_text
from components.logit_cache import (
    CacheError,
    CacheInfo,
    CacheSpec,
    build_logit_cache,
    open_logit_cache,
)
from components.models import build_model, count_parameters
from components.onnx_export import ExportResult, ParityError, export_onnx, onnx_session, run_onnx
from components.quantize import int8_decision, onnx_accuracy, quantize_int8
from components.training import (
    TrainResult,
    resolve_device,
    seed_everything,
    train_classifier,
)
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
    history: str  # history.json beside the checkpoint: metrics per epoch
    parameters: int
    size_bytes: int
    test_accuracy: float
    run_id: str  # the MLflow run that trained it (an earlier run's when reused)


class CacheRef(Ref):
    info: CacheInfo
    run_id: str


class OnnxRef(Ref):
    """The exported student (float32) and, when configured, its INT8 twin."""

    export: ExportResult
    int8_path: str | None
    int8_sha256: str | None
    int8_test_accuracy: float | None
    run_id: str


class BenchmarkRef(Ref):
    json_path: str
    markdown_path: str
    results: list[dict]
    run_id: str


# --- fingerprints and caching -----------------------------------------------------------------

# Bump when a stage's output or its reference changes meaning: old cache entries then miss.
CACHE_FORMAT = 1


def fingerprint_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect cache key of a stage: the task's name and its inputs' fingerprint."""
    return f"{context.task.name}-{parameters['fingerprint']}"


def cached_task(name: str) -> Any:
    """A stage Prefect skips when its fingerprint is cached: the reference comes back as JSON."""
    return task(
        name=name,
        cache_key_fn=fingerprint_cache_key,
        persist_result=True,
        result_serializer="json",
    )


def _fingerprint(stage: str, inputs: dict[str, Any]) -> str:
    return sha256_json({"stage": stage, "format": CACHE_FORMAT, **inputs})[:16]


def _processes(config: PipelineConfig) -> dict[str, int]:
    # Training in N processes gives other weights (per-process BatchNorm statistics, summation
    # order); one process keeps the key it always had.
    n = config.distributed.nproc
    return {"nproc": n} if n > 1 else {}


def teacher_fingerprint(config: PipelineConfig, data: DatasetInfo) -> str:
    return _fingerprint(
        "teacher",
        {
            "model": config.teacher.model.model_dump(mode="json"),
            "train": config.teacher.train.model_dump(mode="json"),
            "dataset": data.fingerprint,
            "seed": config.seed,
            "device": config.device,
            **_processes(config),
        },
    )


def cache_fingerprint(config: PipelineConfig, data: DatasetInfo, teacher: ModelRef) -> str:
    """The logit cache's own key: teacher weights, dataset, view policy and seed, storage."""
    return CacheSpec.create(
        teacher.sha256, data.fingerprint, config.student.train.augment, config.seed, config.cache
    ).key


def student_fingerprint(config: PipelineConfig, data: DatasetInfo, cache: CacheRef | None) -> str:
    return _fingerprint(
        "student-kd" if cache is not None else "student-baseline",
        {
            "model": config.student.model.model_dump(mode="json"),
            "train": config.student.train.model_dump(mode="json"),
            "view_pool": config.cache.views,
            "distill": config.distill.model_dump(mode="json") if cache is not None else None,
            "cache": cache.info.key if cache is not None else None,
            "dataset": data.fingerprint,
            "seed": config.seed,
            "device": config.device,
            **_processes(config),
        },
    )


def export_fingerprint(config: PipelineConfig, student: ModelRef, teacher: ModelRef) -> str:
    return _fingerprint(
        "onnx-export",
        {
            "student": student.sha256,
            "teacher": teacher.sha256,
            "export": config.export.model_dump(mode="json"),
            "seed": config.seed,
        },
    )


def benchmark_fingerprint(config: PipelineConfig, models: list[ModelRef], onnx: OnnxRef) -> str:
    """Latency depends on the models, the settings and the machine, so all three are in it."""
    cpu = cpu_info()
    return _fingerprint(
        "benchmark",
        {
            "models": [m.sha256 for m in models],
            "onnx": [onnx.export.sha256, onnx.int8_sha256],
            "benchmark": config.benchmark.model_dump(mode="json"),
            "machine": [platform.node(), cpu["model"], cpu["cores"]],
            "versions": [torch.__version__, onnxruntime.__version__],
        },
    )


def damaged(ref: Ref) -> str | None:
    """Why a cached reference can no longer be used (a file gone or changed), else None."""

    def changed(path: str, sha256: str) -> str | None:
        if not Path(path).is_file():
            return f"{path} no longer exists"
        if sha256_file(Path(path)) != sha256:
            return f"{path} changed since it was cached (sha256 differs)"
        return None

    if isinstance(ref, ModelRef):
        return changed(ref.checkpoint, ref.sha256) or (
            None if Path(ref.history).is_file() else f"{ref.history} no longer exists"
        )
    if isinstance(ref, CacheRef):
        try:
            open_logit_cache(Path(ref.info.path), expected_key=ref.info.key)
        except CacheError as err:
            return str(err)
        return None
    if isinstance(ref, OnnxRef):
        problem = changed(ref.export.path, ref.export.sha256)
        if problem is None and ref.int8_path is not None and ref.int8_sha256 is not None:
            problem = changed(ref.int8_path, ref.int8_sha256)
        return problem
    if isinstance(ref, BenchmarkRef):
        missing = [p for p in (ref.json_path, ref.markdown_path) if not Path(p).is_file()]
        return f"{missing[0]} no longer exists" if missing else None
    return None


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
    cache: CacheRef | None,
    fingerprint: str,
    run_name: str | None = None,
) -> ModelRef:
    """Shared body of the three training stages; only the teacher's targets differ."""
    logger = get_run_logger()
    tracker = Tracker(ctx.tracking_uri)
    with tracker.child_run(ctx.experiment_id, ctx.parent_run_id, run_name or role) as run_id:
        device = resolve_device(config.device)
        seed_everything(config.seed)
        model = build_model(model_config.name, data.in_channels, data.num_classes)
        distill = config.distill if cache is not None else None
        is_teacher = role == "teacher"
        params = {
            "role": role,
            "model.name": model_config.name,
            "model.parameters": count_parameters(model),
            "seed": config.seed,
            "device": str(device),
            "processes": config.distributed.nproc,
            "dataset.fingerprint": data.fingerprint,
            "stage.fingerprint": fingerprint,
            **flatten(train_config.model_dump(mode="json"), "train."),
        }
        if not is_teacher:
            params["cache.views"] = config.cache.views  # the view pool both students share
        if cache is not None and distill is not None:
            params |= {
                "cache.key": cache.info.key,
                "cache.run_id": cache.run_id,
                **flatten(distill.model_dump(mode="json"), "distill."),
            }
        tracker.log_params(run_id, params)

        checkpoint = Path(ctx.work_dir) / "models" / role / fingerprint / "model.pt"
        state_path = checkpoint.with_name("train_state.pt")
        fit = _Fit(
            role=role,
            dataset_path=data.path,
            train=train_config,
            seed=config.seed,
            # The teacher sees a fresh view every epoch; both students pick from the K views
            # the cache holds, so the control sees exactly the distilled student's inputs.
            view_seed=stream_seed(config.seed, "teacher-views") if is_teacher else config.seed,
            view_pool=None if is_teacher else config.cache.views,
            cache=(cache.info.path, cache.info.key) if cache is not None else None,
            distill=distill,
            tracking_uri=ctx.tracking_uri,
            run_id=run_id,
            state_path=str(state_path),
        )
        if state_path.is_file():
            logger.info("%s: resuming from the training state in %s", role, state_path)
        nproc = config.distributed.nproc
        if nproc > 1 and device.type == "cuda" and nproc > torch.cuda.device_count():
            # NCCL needs a GPU of its own for every process.
            raise ValueError(
                f"distributed.nproc={nproc} needs {nproc} GPUs for training on cuda; "
                f"this machine has {torch.cuda.device_count()}"
            )
        if nproc > 1:
            logger.info("%s: training in %d processes (DistributedDataParallel)", role, nproc)
            state, result = launch(_fit_in_process_group, nproc, fit, model, device.type)[0]
            model.load_state_dict(state)
        else:
            result = fit.run(model, device, on_epoch_log=logger.info)
        history = write_json(checkpoint.with_name("history.json"), result.history)
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
        # The checkpoint supersedes the training state (a forced rerun must start over).
        state_path.unlink(missing_ok=True)
        if result.resumed_from_epoch:
            tracker.set_tags(run_id, {"resumed_from_epoch": result.resumed_from_epoch})
            logger.info("%s: resumed after epoch %d", role, result.resumed_from_epoch)
        size = checkpoint.stat().st_size
        # val_* of the last epoch is already logged at its step; add the test figures.
        test_metrics = {k: v for k, v in result.final.items() if k.startswith("test_")}
        tracker.log_metrics(
            run_id, {**test_metrics, "checkpoint_bytes": size}, step=train_config.epochs
        )
        tracker.set_tags(run_id, {"checkpoint_sha256": sha256})
        tracker.log_artifact(run_id, checkpoint, "checkpoint")
        tracker.log_artifact(run_id, history, "checkpoint")
        logger.info("%s: test accuracy %.4f", role, result.final["test_accuracy"])
        return ModelRef(
            role=role,
            arch=model_config.name,
            checkpoint=str(checkpoint),
            sha256=sha256,
            history=str(history),
            parameters=count_parameters(model),
            size_bytes=size,
            test_accuracy=result.final["test_accuracy"],
            run_id=run_id,
        )


@dataclass(frozen=True)
class _Fit:
    """One training run's inputs, picklable, so launched processes can run it too."""

    role: str
    dataset_path: str
    train: TrainConfig
    seed: int
    view_seed: int
    view_pool: int | None
    cache: tuple[str, str] | None  # (directory, key) of the logit cache, for the students
    distill: DistillConfig | None
    tracking_uri: str
    run_id: str
    state_path: str  # per-epoch training state: a killed run resumes from it

    def run(
        self,
        model: torch.nn.Module,
        device: torch.device,
        on_epoch_log: Callable[..., None] | None,
        rank: int = 0,
        world: int = 1,
    ) -> TrainResult:
        # The teacher itself is never loaded here: its knowledge arrives only as the cache.
        teacher_cache = (
            open_logit_cache(Path(self.cache[0]), expected_key=self.cache[1])
            if self.cache is not None
            else None
        )
        tracker = Tracker(self.tracking_uri)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            tracker.log_metrics(self.run_id, metrics, step=epoch)
            if on_epoch_log is not None:
                on_epoch_log(
                    "%s epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f",
                    self.role,
                    epoch,
                    self.train.epochs,
                    metrics["train_loss"],
                    metrics["train_accuracy"],
                    metrics["val_loss"],
                    metrics["val_accuracy"],
                )

        return train_classifier(
            model,
            load_dataset(self.dataset_path),
            self.train,
            seed=self.seed,
            device=device,
            view_seed=self.view_seed,
            view_pool=self.view_pool,
            teacher_cache=teacher_cache,
            distill=self.distill,
            on_epoch=on_epoch if rank == 0 else None,  # one process logs
            desc=self.role,
            rank=rank,
            world=world,
            state_path=Path(self.state_path),
        )


def _fit_in_process_group(
    fit: _Fit, model: torch.nn.Module, device_type: str
) -> tuple[dict[str, torch.Tensor], TrainResult] | None:
    """A launched process's share of the training; rank 0 returns the weights and metrics."""
    rank, world = rank_and_world()
    device = worker_device(device_type)
    join_process_group(device)
    try:
        log = None
        if rank == 0:  # a fresh process: its log lines go to the launching console
            logging.basicConfig(level=logging.INFO, format="%(asctime)s | rank 0 | %(message)s")
            log = logging.getLogger("kd.train").info
        result = fit.run(model, device, log, rank=rank, world=world)
    finally:
        leave_process_group()
    if rank != 0:
        return None
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, result


@cached_task("train-teacher")
def train_teacher(
    config: PipelineConfig, ctx: RunContext, data: DatasetInfo, fingerprint: str
) -> ModelRef:
    return _train(
        "teacher", config.teacher.model, config.teacher.train, config, ctx, data, None, fingerprint
    )


@cached_task("train-student")
def train_student(
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    cache: CacheRef | None,
    fingerprint: str,
    run_name: str | None = None,
) -> ModelRef:
    """Without a cache: the label-only control (``student-baseline``); with one, ``student-kd``.
    ``run_name`` names the MLflow run when several distilled students share one parent."""
    role = "student-kd" if cache is not None else "student-baseline"
    return _train(
        role,
        config.student.model,
        config.student.train,
        config,
        ctx,
        data,
        cache,
        fingerprint,
        run_name,
    )


# --- logit cache ------------------------------------------------------------------------------


@cached_task("cache-teacher-logits")
def cache_teacher_logits(
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    teacher: ModelRef,
    fingerprint: str,
    rebuild: bool = False,
) -> CacheRef:
    """``fingerprint`` is the cache key itself; ``rebuild`` discards a cache already on disk."""
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
            rebuild=rebuild,
            workers=config.distributed.nproc,
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
        return CacheRef(info=info, run_id=run_id)


# --- export and benchmark ---------------------------------------------------------------------


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@cached_task("export-onnx")
def export_student_onnx(
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    student: ModelRef,
    teacher: ModelRef,
    fingerprint: str,
) -> OnnxRef:
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
            "student_checkpoint_sha256": student.sha256,
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
        path = Path(ctx.work_dir) / "onnx" / fingerprint / "model.onnx"
        dataset = load_dataset(data.path)
        try:
            result = export_onnx(model, dataset, path, config.export, metadata)
        except ParityError as err:
            # What failed and how far, for whoever investigates: then fail loudly.
            tracker.log_dict(run_id, {"error": str(err), "reports": err.reports}, "parity.json")
            raise
        int8_path, int8_accuracy = None, None
        if config.export.int8:
            int8_path = quantize_int8(
                path,
                path.with_name("model.int8.onnx"),
                dataset,
                config.export.calibration_images,
                config.seed,
            )
            int8_accuracy = onnx_accuracy(int8_path, dataset)
            tracker.log_metrics(
                run_id,
                {
                    "int8_test_accuracy": int8_accuracy,
                    "int8_model_bytes": int8_path.stat().st_size,
                },
            )
            tracker.log_artifact(run_id, int8_path, "onnx")
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
        return OnnxRef(
            export=result,
            int8_path=str(int8_path) if int8_path else None,
            int8_sha256=sha256_file(int8_path) if int8_path else None,
            int8_test_accuracy=int8_accuracy,
            run_id=run_id,
        )


@cached_task("benchmark")
def benchmark(
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    models: list[ModelRef],
    exported: OnnxRef,
    onnx_variant: str,
    fingerprint: str,
) -> BenchmarkRef:
    tracker = Tracker(ctx.tracking_uri)
    with tracker.child_run(ctx.experiment_id, ctx.parent_run_id, "benchmark") as run_id:
        tracker.log_params(run_id, flatten(config.benchmark.model_dump(mode="json"), "benchmark."))
        shape = (data.in_channels, *data.image_size)
        loaded = {
            ref.role: load_checkpoint(Path(ref.checkpoint), "cpu", expected_sha256=ref.sha256)[0]
            for ref in models
        }
        onnx_models = [(onnx_variant, Path(exported.export.path))]
        if exported.int8_path is not None:
            onnx_models.append((f"{onnx_variant}-int8", Path(exported.int8_path)))
        rows, report = measure_inference(
            ("student-kd", loaded.pop("student-kd")),
            onnx_models,
            list(loaded.items()),
            shape,
            config.benchmark,
        )
        out_dir = Path(ctx.work_dir) / "benchmarks" / fingerprint
        json_path = write_json(out_dir / "benchmark.json", report)
        md_path = write_text(out_dir / "benchmark.md", report_markdown(rows, report))
        png_path = latency_chart(rows, out_dir / "latency.png")
        for r in rows:
            prefix = f"{r.variant}.{r.runtime}.threads{r.threads}.batch{r.batch_size}"
            tracker.log_metrics(
                run_id,
                {
                    f"{prefix}.p50_ms": r.p50_ms,
                    f"{prefix}.p90_ms": r.p90_ms,
                    f"{prefix}.p99_ms": r.p99_ms,
                    f"{prefix}.mean_ms": r.mean_ms,
                    f"{prefix}.images_per_s": r.throughput_per_s,
                },
            )
        headline = {
            k: report[k]
            for k in ("speedup_ort_fp32_vs_torch_b1", "fraction_of_matmul_peak", "flops_per_image")
            if report[k] is not None
        }
        tracker.log_metrics(run_id, headline)
        cpu = report["environment"]["cpu"]
        tracker.set_tags(
            run_id,
            {
                "cpu": cpu["model"],
                "cores": cpu["cores"],
                "isa": ",".join(f for f, on in cpu["isa"].items() if on),
                "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
        )
        for path in (json_path, md_path, png_path):
            tracker.log_artifact(run_id, path)
        get_run_logger().info(
            "ONNX Runtime float32 is %.2fx faster than PyTorch eager at batch %d",
            report["speedup_ort_fp32_vs_torch_b1"] or 0.0,
            min(config.benchmark.batch_sizes),
        )
        return BenchmarkRef(
            json_path=str(json_path),
            markdown_path=str(md_path),
            results=[asdict(r) for r in rows],
            run_id=run_id,
        )


# --- registry and handoff ---------------------------------------------------------------------


class HandoffRef(Ref):
    bundle: str
    model_name: str
    version: str
    alias: str
    int8_kept: bool
    int8_reason: str
    run_id: str


@task(name="register-and-handoff", cache_policy=NO_CACHE)
def register_and_handoff(
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    models: list[ModelRef],
    exported: OnnxRef,
    bench: BenchmarkRef,
    onnx_variant: str,
) -> HandoffRef:
    """Decide on INT8, write the bundle, log the ONNX model and register it under an alias."""
    tracker = Tracker(ctx.tracking_uri)
    with tracker.child_run(ctx.experiment_id, ctx.parent_run_id, "handoff") as run_id:
        fp32 = exported.export
        tracker.log_params(run_id, flatten(config.registry.model_dump(mode="json"), "registry."))
        # INT8 earns its place only by the figures measured in this run.
        int8_kept, int8_reason = False, "not built (export.int8 is off)"
        if exported.int8_path is not None and exported.int8_test_accuracy is not None:
            batch = min(config.benchmark.batch_sizes)
            decision = int8_decision(
                fp32.onnx_test_accuracy,
                exported.int8_test_accuracy,
                p50_of(bench.results, onnx_variant, batch) or float("inf"),
                p50_of(bench.results, f"{onnx_variant}-int8", batch) or float("inf"),
                config.export.int8_max_accuracy_drop,
            )
            int8_kept, int8_reason = decision.keep, decision.reason
            tracker.log_metrics(
                run_id,
                {
                    "int8_accuracy_drop": decision.accuracy_drop,
                    "int8_latency_ratio": decision.latency_ratio,
                },
            )
        by_role = {m.role: m for m in models}
        student = by_role["student-kd"]
        accuracy_rows = [(m.role, "pytorch", m.test_accuracy, m.parameters) for m in models]
        accuracy_rows.append(
            ("model.onnx", "onnxruntime float32", fp32.onnx_test_accuracy, student.parameters)
        )
        if exported.int8_test_accuracy is not None:
            accuracy_rows.append(
                (
                    "model.int8.onnx",
                    "onnxruntime int8",
                    exported.int8_test_accuracy,
                    student.parameters,
                )
            )
        latency_rows = [
            (r["variant"], r["threads"], r["batch_size"], r["p50_ms"], r["throughput_per_s"])
            for r in bench.results
            if r["runtime"] == "onnxruntime"
        ]
        card = model_card(
            title=f"{config.registry.model_name}: distilled {student.arch} student",
            description=(
                f"A {student.arch} ({student.parameters:,} parameters) distilled with "
                f"{config.distill.kind} from a {by_role['teacher'].arch} teacher "
                f"({by_role['teacher'].parameters:,} parameters) by kd-pipeline, exported to ONNX "
                f"(opset {fp32.opset}, {fp32.exporter} exporter)."
            ),
            data=data,
            data_source=config.data.kind,
            accuracy_rows=accuracy_rows,
            latency_rows=latency_rows,
            int8_reason=int8_reason,
            parity=fp32.parity,
            run_ids={
                "pipeline run": ctx.parent_run_id,
                "teacher run": by_role["teacher"].run_id,
                "student run": student.run_id,
                "ONNX sha256": fp32.sha256,
            },
        )
        bundle = write_bundle(
            Path(ctx.work_dir) / "handoff" / ctx.parent_run_id,
            Path(fp32.path),
            Path(exported.int8_path) if int8_kept and exported.int8_path else None,
            data,
            fp32.parity,
            json.loads(Path(bench.json_path).read_text()),
            card,
        )
        tracker.log_artifacts(run_id, bundle, "handoff")

        # The MLflow model (onnx flavor, signature and input example), saved locally and
        # logged by run id, then registered as a new version under the alias.
        dataset = load_dataset(data.path)
        example = (
            normalize(np.asarray(dataset.split("test")[0][:2]), dataset.info).contiguous().numpy()
        )
        proto = onnx.load(fp32.path)
        signature = infer_signature(example, run_onnx(onnx_session(fp32.path), example))
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(scratch) / "model"
            mlflow.onnx.save_model(
                proto,
                str(local),
                signature=signature,
                input_example=example,
                save_as_external_data=False,
            )
            tracker.log_artifacts(run_id, local, "model")
        version = tracker.register(
            config.registry.model_name,
            run_id,
            "model",
            config.registry.alias,
            tags={
                "opset": fp32.opset,
                "exporter": fp32.exporter,
                "onnx_sha256": fp32.sha256,
                "parity_max_abs_diff": f"{fp32.max_abs_diff:.3g}",
                "parity_top1_agreement": f"{fp32.top1_agreement:.6f}",
                "test_accuracy": f"{fp32.onnx_test_accuracy:.6f}",
                "dataset_fingerprint": data.fingerprint,
                "pipeline_run_id": ctx.parent_run_id,
                "int8": int8_reason,
            },
        )
        tracker.set_tags(
            run_id,
            {
                "model_name": config.registry.model_name,
                "model_version": version,
                "int8": int8_reason,
            },
        )
        get_run_logger().info(
            "handoff bundle %s; registered %s version %s as @%s; INT8 %s",
            bundle,
            config.registry.model_name,
            version,
            config.registry.alias,
            int8_reason,
        )
        return HandoffRef(
            bundle=str(bundle),
            model_name=config.registry.model_name,
            version=version,
            alias=config.registry.alias,
            int8_kept=int8_kept,
            int8_reason=int8_reason,
            run_id=run_id,
        )
