"""``kd sweep``: several distillation settings in parallel, as one Prefect flow.

One MLflow parent run; the teacher, the logit cache and the label-only baseline once (cached
stages, as in the pipeline); then one distilled student per combination of
``sweep.grid``, trained at once through the Prefect task runner the config names (threads,
processes, or a local Dask cluster via prefect-dask), each its own MLflow child run named
``student-kd[<setting>]``. ``kd compare RUN_ID`` shows them beside the teacher and baseline.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from components.config import PipelineConfig, SweepConfig, sweep_points
from flows.pipeline import Stages, parent_run, resolve_force
from flows.tasks import (
    CacheRef,
    ModelRef,
    prepare_data,
    student_fingerprint,
    train_student,
)


class SweepResult(BaseModel):
    parent_run_id: str
    tracking_uri: str
    teacher: ModelRef
    cache: CacheRef
    baseline: ModelRef
    students: dict[str, ModelRef]  # setting label -> distilled student
    table_markdown: str


def task_runner(sweep: SweepConfig) -> TaskRunner:
    """The Prefect task runner the config asks for."""
    if sweep.task_runner == "thread":
        return ThreadPoolTaskRunner(max_workers=sweep.max_workers)
    if sweep.task_runner == "process":
        return ProcessPoolTaskRunner(max_workers=sweep.max_workers)
    from prefect_dask import DaskTaskRunner

    # One single-threaded worker process per student: torch's own threads are the parallelism.
    return DaskTaskRunner(cluster_kwargs={"n_workers": sweep.max_workers, "threads_per_worker": 1})


def sweep_table(baseline: ModelRef, students: dict[str, ModelRef]) -> str:
    lines = [
        "| student | test accuracy | vs baseline (points) |",
        "|---|---:|---:|",
        f"| student-baseline (labels only) | {baseline.test_accuracy:.4f} | |",
    ]
    ranked = sorted(students.items(), key=lambda item: -item[1].test_accuracy)
    for label, ref in ranked:
        gain = (ref.test_accuracy - baseline.test_accuracy) * 100
        lines.append(f"| student-kd[{label}] | {ref.test_accuracy:.4f} | {gain:+.2f} |")
    return "\n".join(lines) + "\n"


@flow(name="kd-sweep")
def sweep_pipeline(config: PipelineConfig, force: list[str] | None = None) -> SweepResult:
    """Distil one student per setting of ``config.sweep.grid``, in parallel."""
    points = sweep_points(config)
    forced = resolve_force(force)
    with parent_run(config, "kd-sweep") as (tracker, ctx):
        tracker.set_tags(ctx.parent_run_id, {"sweep_points": len(points)})
        stages = Stages(ctx, tracker, forced)
        data = prepare_data(config, ctx)
        teacher, cache, baseline = stages.upstream(config, data)
        calls = {
            f"student-kd[{label}]": (
                (point, ctx, data, cache),
                {"run_name": f"student-kd[{label}]"},
                student_fingerprint(point, data, cache),
            )
            for label, point in points
        }
        get_run_logger().info(
            "%d distilled students, %d at a time (%s task runner)",
            len(calls),
            config.sweep.max_workers,
            config.sweep.task_runner,
        )
        trained = stages.run_many("student-kd", train_student, calls)
        students = {name[len("student-kd[") : -1]: ref for name, ref in trained.items()}
        table = sweep_table(baseline, students)
        tracker.log_text(ctx.parent_run_id, table, "sweep.md")
        best = max(students.items(), key=lambda item: item[1].test_accuracy)
        tracker.set_tags(
            ctx.parent_run_id,
            {"sweep_best": best[0], "reused_stages": ",".join(stages.reused) or "none"},
        )
        tracker.log_metrics(
            ctx.parent_run_id,
            {
                "teacher_test_accuracy": teacher.test_accuracy,
                "baseline_test_accuracy": baseline.test_accuracy,
                "best_kd_test_accuracy": best[1].test_accuracy,
            },
        )
        create_table_artifact(
            key="kd-sweep",
            table=[
                {"setting": label, "test_accuracy": ref.test_accuracy, "run_id": ref.run_id}
                for label, ref in students.items()
            ],
            description=f"kd-sweep {ctx.parent_run_id}: one distilled student per setting",
        )
        get_run_logger().info("sweep results:\n%s", table)
    return SweepResult(
        parent_run_id=ctx.parent_run_id,
        tracking_uri=tracker.tracking_uri,
        teacher=teacher,
        cache=cache,
        baseline=baseline,
        students=students,
        table_markdown=table,
    )
