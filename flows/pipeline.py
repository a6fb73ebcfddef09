"""The distillation pipeline as one Prefect flow and one MLflow parent run.

prepare-data -> teacher -> logit-cache -> student-baseline, student-kd
             -> onnx-export -> benchmark -> summary
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from components.benchmark import p50_of
from components.config import PipelineConfig, config_to_yaml, flatten
from components.io import ensure_writable
from components.logit_cache import CacheInfo
from flows.tasks import (
    BenchmarkRef,
    HandoffRef,
    ModelRef,
    OnnxRef,
    RunContext,
    benchmark,
    cache_teacher_logits,
    export_student_onnx,
    prepare_data,
    register_and_handoff,
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
    onnx: OnnxRef
    benchmark: BenchmarkRef
    handoff: HandoffRef
    summary_markdown: str


def summary_table(
    models: list[ModelRef], onnx: OnnxRef, onnx_variant: str, bench: BenchmarkRef
) -> str:
    def p50(variant: str, batch: int) -> str:
        value = p50_of(bench.results, variant, batch)  # on all cores
        return "-" if value is None else f"{value:.3f}"

    batches = sorted({r["batch_size"] for r in bench.results})
    head = "| model | runtime | test accuracy | parameters | size (KiB) | "
    head += " | ".join(f"p50 ms @ batch {b}" for b in batches) + " |"
    lines = [head, "|" + "---|" * (5 + len(batches))]

    def row(name: str, runtime: str, variant: str, accuracy: float, params: int, size: int) -> None:
        lat = " | ".join(p50(variant, b) for b in batches)
        lines.append(
            f"| {name} | {runtime} | {accuracy:.4f} | {params:,} | {size / 1024:.1f} | {lat} |"
        )

    for ref in models:
        row(ref.role, "pytorch", ref.role, ref.test_accuracy, ref.parameters, ref.size_bytes)
    student = next(m for m in models if m.role == "student-kd")
    fp32 = onnx.export
    row(
        onnx_variant,
        "onnxruntime",
        onnx_variant,
        fp32.onnx_test_accuracy,
        student.parameters,
        fp32.size_bytes,
    )
    if onnx.int8_path is not None and onnx.int8_test_accuracy is not None:
        size = Path(onnx.int8_path).stat().st_size
        row(
            f"{onnx_variant}-int8",
            "onnxruntime",
            f"{onnx_variant}-int8",
            onnx.int8_test_accuracy,
            student.parameters,
            size,
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
        handoff = register_and_handoff(config, ctx, data, models, exported, bench, onnx_variant)

        summary = summary_table(models, exported, onnx_variant, bench)
        tracker.log_text(parent_run_id, summary, "summary.md")
        tracker.log_metrics(
            parent_run_id,
            {
                "teacher_test_accuracy": teacher.test_accuracy,
                "baseline_test_accuracy": baseline.test_accuracy,
                "kd_test_accuracy": student.test_accuracy,
                "onnx_test_accuracy": exported.export.onnx_test_accuracy,
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
        handoff=handoff,
        summary_markdown=summary,
    )
