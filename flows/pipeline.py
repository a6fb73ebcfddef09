"""The distillation pipeline as one Prefect flow and one MLflow parent run.

prepare-data -> teacher -> logit-cache -> student-baseline, student-kd
             -> onnx-export -> benchmark -> summary
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from components.config import PipelineConfig, config_to_yaml, flatten
from components.logit_cache import CacheInfo
from components.onnx_export import ExportResult
from flows.tasks import (
    BenchmarkRef,
    ModelRef,
    RunContext,
    benchmark,
    cache_teacher_logits,
    export_student_onnx,
    prepare_data,
    train_student,
    train_teacher,
)
from flows.tracking import Tracker, resolve_tracking_uri, ui_command


class PipelineResult(BaseModel):
    parent_run_id: str
    tracking_uri: str
    ui_command: str
    work_dir: str
    teacher: ModelRef
    cache: CacheInfo
    baseline: ModelRef
    student: ModelRef
    onnx: ExportResult
    benchmark: BenchmarkRef
    summary_markdown: str


def ensure_writable(directory: Path) -> Path:
    """Fail before any work when the work directory cannot be written."""
    directory = directory.expanduser().resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"work_dir {directory}: not writable ({err.strerror})") from err
    return directory


def summary_table(
    models: list[ModelRef], onnx: ExportResult, onnx_variant: str, bench: BenchmarkRef
) -> str:
    def p50(variant: str, runtime: str, batch: int) -> str:
        for r in bench.results:
            if (r["variant"], r["runtime"], r["batch_size"]) == (variant, runtime, batch):
                return f"{r['p50_ms']:.3f}"
        return "-"

    batches = sorted({r["batch_size"] for r in bench.results})
    head = "| model | runtime | test accuracy | parameters | size (KiB) | "
    head += " | ".join(f"p50 ms @ batch {b}" for b in batches) + " |"
    lines = [head, "|" + "---|" * (5 + len(batches))]
    for ref in models:
        lat = " | ".join(p50(ref.role, "pytorch", b) for b in batches)
        lines.append(
            f"| {ref.role} | pytorch | {ref.test_accuracy:.4f} | {ref.parameters:,} "
            f"| {ref.size_bytes / 1024:.1f} | {lat} |"
        )
    student = next(m for m in models if m.role == "student-kd")
    lat = " | ".join(p50(onnx_variant, "onnxruntime", b) for b in batches)
    lines.append(
        f"| {onnx_variant} | onnxruntime | {onnx.onnx_test_accuracy:.4f} | {student.parameters:,} "
        f"| {onnx.size_bytes / 1024:.1f} | {lat} |"
    )
    return "\n".join(lines) + "\n"


@flow(name="kd-pipeline")
def distillation_pipeline(config: PipelineConfig) -> PipelineResult:
    """Train a teacher, cache its logits, distil a student, export, verify and benchmark it."""
    logger = get_run_logger()
    work_dir = ensure_writable(config.work_dir)
    tracker = Tracker(resolve_tracking_uri())
    experiment_id = tracker.experiment_id(config.experiment_name)
    parent_run_id = tracker.create_run(
        experiment_id,
        f"kd-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"prefect_flow_run_id": str(flow_run.id), "pipeline": "kd-pipeline"},
    )
    logger.info("MLflow parent run %s on %s", parent_run_id, tracker.tracking_uri)
    with tracker.running(parent_run_id):
        tracker.log_params(parent_run_id, flatten(config.model_dump(mode="json")))
        tracker.log_text(parent_run_id, config_to_yaml(config), "config.yaml")
        ctx = RunContext(
            tracking_uri=tracker.tracking_uri,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            work_dir=str(work_dir),
        )

        data = prepare_data(config, ctx)
        teacher = train_teacher(config, ctx, data)
        cache = cache_teacher_logits(config, ctx, data, teacher)
        baseline = train_student(config, ctx, data, None)
        student = train_student(config, ctx, data, cache)
        onnx_variant = "student-kd-onnx"
        exported = export_student_onnx(config, ctx, data, student, teacher)
        models = [teacher, baseline, student]
        bench = benchmark(config, ctx, data, models, exported, onnx_variant)

        summary = summary_table(models, exported, onnx_variant, bench)
        tracker.log_text(parent_run_id, summary, "summary.md")
        tracker.log_metrics(
            parent_run_id,
            {
                "teacher_test_accuracy": teacher.test_accuracy,
                "baseline_test_accuracy": baseline.test_accuracy,
                "kd_test_accuracy": student.test_accuracy,
                "onnx_test_accuracy": exported.onnx_test_accuracy,
                "compression_ratio": teacher.parameters / student.parameters,
            },
        )
    return PipelineResult(
        parent_run_id=parent_run_id,
        tracking_uri=tracker.tracking_uri,
        ui_command=ui_command(tracker.tracking_uri),
        work_dir=str(work_dir),
        teacher=teacher,
        cache=cache,
        baseline=baseline,
        student=student,
        onnx=exported,
        benchmark=bench,
        summary_markdown=summary,
    )
