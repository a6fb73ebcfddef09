"""``kd sweep``: several distillation settings in parallel, as one Prefect flow.

One MLflow parent run; the stages every distilled student shares (``prepare-data``, the
teacher, the logit cache) and the label-only baseline once, cached as in the pipeline; then
one ``student-kd`` per combination of ``sweep.grid``, trained at once through the Prefect task
runner the config names (threads, processes, or a local Dask cluster via prefect-dask), each
its own MLflow child run named ``student-kd[<setting>]``. ``kd compare RUN_ID`` shows them
beside the teacher and baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, assert_never

from prefect import flow, get_run_logger
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from components.config import PipelineConfig, SweepConfig, sweep_points
from components.cores import share_cores
from components.stats import format_accuracy, wilson
from flows.pipeline import PIPELINE, forced_stages, parent_run
from flows.refs import DataRef, ModelRef
from flows.runner import Runner, publish_table
from flows.stage import Stage


def task_runner(sweep: SweepConfig) -> TaskRunner[Any]:
    """The Prefect task runner the config asks for."""
    match sweep.task_runner:
        case "thread":
            return ThreadPoolTaskRunner(max_workers=sweep.max_workers)
        case "process":
            return ProcessPoolTaskRunner(max_workers=sweep.max_workers)
        case "dask":
            from prefect_dask import DaskTaskRunner

            # One single-threaded worker process per student: torch's own threads are the
            # parallelism.
            return DaskTaskRunner(
                cluster_kwargs={"n_workers": sweep.max_workers, "threads_per_worker": 1}
            )
        case _:
            assert_never(sweep.task_runner)


def shared_stages(stages: tuple[Stage[Any], ...]) -> list[Stage[Any]]:
    """What every distilled student of a sweep shares: the stages ``student-kd`` needs,
    transitively, and the baseline it is compared with."""
    by_name = {stage.name: stage for stage in stages}
    wanted = {"student-baseline"}
    todo = ["student-kd", "student-baseline"]
    while todo:
        for need in by_name[todo.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                todo.append(need)
    return [stage for stage in stages if stage.name in wanted]


def sweep_table(baseline: ModelRef, students: dict[str, ModelRef], n_val: int, n_test: int) -> str:
    """Ranked by validation accuracy, which chooses; test accuracy beside it, reported."""
    lines = [
        f"| student | val accuracy [95% CI], n = {n_val} (chooses) | "
        f"test accuracy [95% CI], n = {n_test} (reported) | val vs baseline (points) |",
        "|---|---:|---:|---:|",
        f"| student-baseline (labels only) | {format_accuracy(baseline.val_accuracy, n_val)} "
        f"| {format_accuracy(baseline.test_accuracy, n_test)} | |",
    ]
    ranked = sorted(students.items(), key=lambda item: -item[1].val_accuracy)
    for name, ref in ranked:
        gain = (ref.val_accuracy - baseline.val_accuracy) * 100
        lines.append(
            f"| {name} | {format_accuracy(ref.val_accuracy, n_val)} | "
            f"{format_accuracy(ref.test_accuracy, n_test)} | {gain:+.2f} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    tracking_uri: str
    table_markdown: str


@flow(name="kd-sweep")
def sweep_pipeline(config: PipelineConfig, force: list[str] | None = None) -> SweepResult:
    """Distil one student per setting of ``config.sweep.grid``, in parallel."""
    points = sweep_points(config)
    forced = forced_stages(config, force, PIPELINE)
    # This machine's cores, shared with any other kd running on it (components/cores.py).
    with (
        share_cores(config.distributed.nproc),
        parent_run(config, "kd-sweep") as (
            tracker,
            pipeline,
        ),
    ):
        parent = pipeline.parent_run_id
        tracker.runs.set_tags(parent, {"sweep_points": len(points)})
        runner = Runner(pipeline, PIPELINE, forced)
        runner.run_all(config, shared_stages(PIPELINE))
        get_run_logger().info(
            "%d distilled students, %d at a time (%s task runner)",
            len(points),
            config.sweep.max_workers,
            config.sweep.task_runner,
        )
        student_kd = next(s for s in PIPELINE if s.name == "student-kd")
        with share_cores(config.sweep.max_workers):  # that many students at once
            trained = runner.run_many(
                student_kd, {f"student-kd[{label}]": point for label, point in points}
            )
        students = {name: ref for name, ref in trained.items() if isinstance(ref, ModelRef)}
        baseline, teacher = (runner.refs[name] for name in ("student-baseline", "teacher"))
        assert isinstance(baseline, ModelRef) and isinstance(teacher, ModelRef)
        data = runner.refs["prepare-data"]
        assert isinstance(data, DataRef)
        n_val, n_test = data.split_sizes["val"], data.split_sizes["test"]
        table = sweep_table(baseline, students, n_val, n_test)
        tracker.runs.log_text(parent, table, "sweep.md")
        # Validation chooses: the test split is only reported beside it.
        best = max(students.items(), key=lambda item: item[1].val_accuracy)
        lo, hi = wilson(round(best[1].val_accuracy * n_val), n_val)
        tracker.runs.set_tags(
            parent,
            {
                "sweep_best": best[0][len("student-kd") + 1 : -1],
                "sweep_best.rule": "highest validation accuracy",
                "sweep_best.val_accuracy": f"{best[1].val_accuracy:.6f}",
                "sweep_best.val_interval": f"[{lo:.6f}, {hi:.6f}]",
                "sweep_best.n": n_val,
                "reused_stages": ",".join(runner.reused) or "none",
            },
        )
        tracker.runs.log_metrics(
            parent,
            {
                "teacher_test_accuracy": teacher.test_accuracy,
                "baseline_test_accuracy": baseline.test_accuracy,
                "best_kd_val_accuracy": best[1].val_accuracy,
                "best_kd_test_accuracy": best[1].test_accuracy,
            },
        )
        publish_table(
            "kd-sweep",
            [
                {
                    "setting": name,
                    "val_accuracy": ref.val_accuracy,
                    "test_accuracy": ref.test_accuracy,
                    "run_id": ref.run_id,
                }
                for name, ref in students.items()
            ],
            f"kd-sweep {parent}: one distilled student per setting",
        )
        get_run_logger().info("sweep results:\n%s", table)
    return SweepResult(parent, tracker.tracking_uri, table)
