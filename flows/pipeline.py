"""The distillation pipeline as one Prefect flow and one MLflow parent run.

prepare-data -> teacher -> logit-cache -> student-baseline, student-kd
             -> onnx-export -> benchmark -> handoff -> promotion -> report

The six expensive stages are cached by Prefect on their input fingerprints (see
``flows.tasks``): a rerun with unchanged inputs reuses them, and each reused stage still
gets its MLflow child run, tagged ``reused`` with the id of the run that did the work.
``kd-retrain`` is the same pipeline for schedules: it reads its config file at run time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from prefect import Task, flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from components.benchmark import p50_of
from components.config import PipelineConfig, config_to_yaml, flatten, load_config
from components.data import DatasetInfo
from components.io import ensure_writable
from flows.promotion import PromotionRef, promote
from flows.report import PIPELINE_TAG, ReportRef, report
from flows.stages import CACHED_STAGES
from flows.tasks import (
    BenchmarkRef,
    CacheRef,
    HandoffRef,
    ModelRef,
    OnnxRef,
    Ref,
    RunContext,
    benchmark,
    benchmark_fingerprint,
    cache_fingerprint,
    cache_teacher_logits,
    damaged,
    export_fingerprint,
    export_student_onnx,
    prepare_data,
    register_and_handoff,
    student_fingerprint,
    teacher_fingerprint,
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
    cache: CacheRef
    baseline: ModelRef
    student: ModelRef
    onnx: OnnxRef
    benchmark: BenchmarkRef
    handoff: HandoffRef
    promotion: PromotionRef | None
    report: ReportRef
    reused: dict[str, str]  # stage -> the MLflow run whose result was reused
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


class StageError(ValueError):
    """An unknown stage name given to ``force``."""


def resolve_force(force: list[str] | None) -> frozenset[str]:
    """Stage names to recompute regardless of the cache; ``all`` means every cached stage."""
    names = set(force or [])
    unknown = names - {*CACHED_STAGES, "all"}
    if unknown:
        raise StageError(
            f"force: unknown stage(s) {', '.join(sorted(unknown))}; "
            f"choose from all, {', '.join(CACHED_STAGES)}"
        )
    return frozenset(CACHED_STAGES) if "all" in names else frozenset(names)


class Stages:
    """Runs the cached stages; a stage Prefect skips still shows in MLflow, as reused."""

    def __init__(self, ctx: RunContext, tracker: Tracker, force: frozenset[str]) -> None:
        self.ctx = ctx
        self.tracker = tracker
        self.force = force
        # Beside the files the references point at: delete the work dir and both go together.
        self.storage = Path(ctx.work_dir) / "prefect-results"
        self.reused: dict[str, str] = {}

    def run(self, stage: str, stage_task: Task, *args: Any, fingerprint: str, **kwargs: Any) -> Any:
        if stage in self.force:
            get_run_logger().info("%s: forced, recomputing (fingerprint %s)", stage, fingerprint)
        state = self._call(stage_task, stage in self.force, args, kwargs, fingerprint)
        return self._settle(stage, stage_task, state, args, kwargs, fingerprint)

    def upstream(
        self, config: PipelineConfig, data: DatasetInfo
    ) -> tuple[ModelRef, CacheRef, ModelRef]:
        """Teacher, logit cache and label-only baseline: what every distilled student shares."""
        teacher = self.run(
            "teacher",
            train_teacher,
            config,
            self.ctx,
            data,
            fingerprint=teacher_fingerprint(config, data),
        )
        cache = self.run(
            "logit-cache",
            cache_teacher_logits,
            config,
            self.ctx,
            data,
            teacher,
            fingerprint=cache_fingerprint(config, data, teacher),
            rebuild="logit-cache" in self.force,
        )
        baseline = self.run(
            "student-baseline",
            train_student,
            config,
            self.ctx,
            data,
            None,
            fingerprint=student_fingerprint(config, data, None),
        )
        return teacher, cache, baseline

    def run_many(
        self,
        stage: str,
        stage_task: Task,
        calls: dict[str, tuple[tuple[Any, ...], dict[str, Any], str]],
    ) -> dict[str, Any]:
        """The same stage on several inputs at once, through the flow's task runner.

        ``calls``: MLflow run name -> (args, kwargs, fingerprint).
        """
        configured = stage_task.with_options(
            result_storage=self.storage, refresh_cache=stage in self.force
        )
        futures = {
            name: configured.submit(*args, fingerprint=fingerprint, **kwargs)
            for name, (args, kwargs, fingerprint) in calls.items()
        }
        results = {}
        for name, future in futures.items():
            future.wait()
            args, kwargs, fingerprint = calls[name]
            results[name] = self._settle(name, stage_task, future.state, args, kwargs, fingerprint)
        return results

    def _settle(
        self,
        name: str,
        stage_task: Task,
        state: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fingerprint: str,
    ) -> Any:
        """The stage's reference; a cached one is checked, and its reuse recorded in MLflow."""
        ref = state.result()
        if state.name != "Cached":
            return ref
        problem = damaged(ref)
        if problem is not None:
            get_run_logger().warning(
                "%s: the cached result cannot be used (%s); recomputing", name, problem
            )
            return self._call(stage_task, True, args, kwargs, fingerprint).result()
        self._record_reuse(name, f"{stage_task.name}-{fingerprint}", ref)
        return ref

    def _call(
        self,
        stage_task: Task,
        refresh: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fingerprint: str,
    ) -> Any:
        configured = stage_task.with_options(result_storage=self.storage, refresh_cache=refresh)
        return configured(*args, fingerprint=fingerprint, return_state=True, **kwargs)

    def _record_reuse(self, stage: str, cache_key: str, ref: Ref) -> None:
        earlier = ref.run_id  # type: ignore[attr-defined]
        tracker, ctx = self.tracker, self.ctx
        run_id = tracker.create_run(
            ctx.experiment_id,
            stage,
            ctx.parent_run_id,
            tags={"reused": "true", "reused_from_run_id": earlier, "prefect_cache_key": cache_key},
        )
        with tracker.running(run_id):
            try:
                tracker.copy_outcome(earlier, run_id)
            except MlflowException:
                tracker.set_tags(run_id, {"reused_from_run_found": "false"})
        self.reused[stage] = earlier
        get_run_logger().info(
            "%s: inputs unchanged (Prefect cache %s): reused the result of MLflow run %s",
            stage,
            cache_key,
            earlier,
        )


@flow(name="kd-pipeline")
def distillation_pipeline(config: PipelineConfig, force: list[str] | None = None) -> PipelineResult:
    """Train a teacher, cache its logits, distil a student, export, verify and benchmark it,
    register it, promote it if it beats the champion, and report.

    ``force`` names stages to recompute even when their inputs are unchanged (``all``: every
    cached stage).
    """
    return run_pipeline(config, force)


@flow(name="kd-retrain")
def retrain(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    force: list[str] | None = None,
) -> PipelineResult:
    """The scheduled entry point: the config file is read when the run starts, so an edited
    config or new data is picked up; unchanged stages are reused from the cache."""
    config = load_config(Path(config_path) if config_path else None, overrides or [])
    return run_pipeline(config, force)


@contextlib.contextmanager
def parent_run(config: PipelineConfig, prefix: str) -> Iterator[tuple[Tracker, RunContext]]:
    """The MLflow parent run of a pipeline or sweep, with the whole config logged to it;
    ended FINISHED, FAILED or KILLED with the block."""
    work_dir = ensure_writable(config.work_dir)
    tracker = Tracker(resolve_tracking_uri())
    experiment_id = tracker.experiment_id(config.experiment_name)
    for orphan in tracker.close_orphans(experiment_id):
        get_run_logger().warning(
            "MLflow run %s was left RUNNING by a killed process: ended KILLED", orphan
        )
    parent_run_id = tracker.create_run(
        experiment_id,
        f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"prefect_flow_run_id": str(flow_run.id), PIPELINE_TAG[0]: PIPELINE_TAG[1]},
    )
    get_run_logger().info("MLflow parent run %s on %s", parent_run_id, tracker.tracking_uri)
    with tracker.running(parent_run_id):
        tracker.log_params(parent_run_id, flatten(config.model_dump(mode="json")))
        tracker.log_text(parent_run_id, config_to_yaml(config), "config.yaml")
        yield (
            tracker,
            RunContext(
                tracking_uri=tracker.tracking_uri,
                experiment_id=experiment_id,
                parent_run_id=parent_run_id,
                work_dir=str(work_dir),
            ),
        )


def run_pipeline(config: PipelineConfig, force: list[str] | None) -> PipelineResult:
    """The body of both flows: the stages in order, inside one MLflow parent run."""
    forced = resolve_force(force)
    with parent_run(config, "kd") as (tracker, ctx):
        parent_run_id = ctx.parent_run_id
        stages = Stages(ctx, tracker, forced)

        data = prepare_data(config, ctx)
        teacher, cache, baseline = stages.upstream(config, data)
        student = stages.run(
            "student-kd",
            train_student,
            config,
            ctx,
            data,
            cache,
            fingerprint=student_fingerprint(config, data, cache),
        )
        onnx_variant = "student-kd-onnx"
        exported = stages.run(
            "onnx-export",
            export_student_onnx,
            config,
            ctx,
            data,
            student,
            teacher,
            fingerprint=export_fingerprint(config, student, teacher),
        )
        models = [teacher, baseline, student]
        bench = stages.run(
            "benchmark",
            benchmark,
            config,
            ctx,
            data,
            models,
            exported,
            onnx_variant,
            fingerprint=benchmark_fingerprint(config, models, exported),
        )
        tracker.set_tags(
            parent_run_id,
            {
                "reused_stages": ",".join(stages.reused) or "none",
                "computed_stages": ",".join(s for s in CACHED_STAGES if s not in stages.reused)
                or "none",
            },
        )
        handoff = register_and_handoff(config, ctx, data, models, exported, bench, onnx_variant)
        promotion = (
            promote(config, ctx, data, exported, handoff) if config.promotion.enabled else None
        )

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
                "stages_reused": len(stages.reused),
            },
        )
        reported = report(config, ctx, data, models, exported)
    return PipelineResult(
        parent_run_id=parent_run_id,
        tracking_uri=tracker.tracking_uri,
        ui_command=ui_command(tracker.tracking_uri),
        work_dir=ctx.work_dir,
        teacher=teacher,
        cache=cache,
        baseline=baseline,
        student=student,
        onnx=exported,
        benchmark=bench,
        handoff=handoff,
        promotion=promotion,
        report=reported,
        reused=stages.reused,
        summary_markdown=summary,
    )
