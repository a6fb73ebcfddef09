"""The distillation pipeline: the ordered list of stages, one Prefect flow, one MLflow parent run.

    prepare-data -> teacher -> logit-cache -> student-baseline, student-kd
                 -> onnx-export -> benchmark -> handoff -> promotion -> report

Each stage is one module under ``flows/stages/``; ``flows/runner.py`` runs them. The CLI,
the reports and the tests read the stage list from ``PIPELINE``. ``kd-retrain`` is the same
pipeline for schedules: it reads its config file at run time; ``kd-retrain-on-data`` runs it
only when the data source's files changed since its last finished retrain.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed

from components.config import PipelineConfig, config_to_yaml, flatten, load_config
from components.cores import share_cores
from components.data_sources import source_version
from components.io import ensure_writable, lock_holder, work_dir_lock, write_json
from flows.control_choice import with_recorded_control
from flows.refs import ReportRef
from flows.runner import Runner
from flows.stage import PipelineContext, Ref, Stage, resolve_force
from flows.stages import PIPELINE
from flows.tracking import DATASET_TAG, PIPELINE_TAG, Tracker, resolve_tracking_uri, ui_command


@dataclass(frozen=True)
class PipelineResult:
    parent_run_id: str
    tracking_uri: str
    ui_command: str
    work_dir: str
    refs: dict[str, Ref]  # stage name -> its reference
    reused: dict[str, str]  # stage -> the MLflow run whose result was reused
    summary_markdown: str
    lines: list[str]  # what the stages have to say about their results, in order
    refused: str | None = None  # why the model was refused (a registry floor, no promotion)


def finished(result: PipelineResult) -> Any:
    """A flow's final state: Completed, named "Refused" (with why) when the model was
    refused, so the Prefect UI shows it; calling the flow still returns ``result``."""
    if result.refused is None:
        return result
    return Completed(name="Refused", message=f"model refused: {result.refused}", data=result)


@flow(name="kd-pipeline")
def distillation_pipeline(config: PipelineConfig, force: list[str] | None = None) -> PipelineResult:
    """Train a teacher, cache its logits, distil a student, export, verify and benchmark it,
    register it, promote it if it beats the champion, and report.

    ``force`` names stages to recompute even when their inputs are unchanged (``all``: every
    cached stage).
    """
    return finished(run_pipeline(config, force))


@flow(name="kd-retrain")
def retrain(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    force: list[str] | None = None,
) -> PipelineResult:
    """The scheduled entry point: the config file is read when the run starts, so an edited
    config or new data is picked up; unchanged stages are reused from the cache."""
    path = Path(config_path) if config_path else None
    config = with_recorded_control(load_config(path, overrides or []), path, overrides or [])
    holder = lock_holder(config.work_dir)
    if holder:
        get_run_logger().warning("work_dir %s is in use by %s: waiting", config.work_dir, holder)
    # A scheduled run that finds a manual one going waits for it rather than skip a retrain.
    with work_dir_lock(config.work_dir, f"scheduled run {flow_run.name}", wait=True):
        return finished(run_pipeline(config, force))


@flow(name="kd-retrain-on-data")
def retrain_on_new_data(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    force: list[str] | None = None,
    watch: str = "manual",
) -> Any:
    """The data-arrival entry point: reads the data source's version (its files' names, sizes
    and times: seconds, nothing decoded) and runs ``kd-retrain`` as a subflow only when it
    differs from the version the last run of watch ``watch`` started on; the version is
    recorded once that run has finished (refused included), so a failed run is retried at
    the next check. Ends "Unchanged" (Completed) when there was nothing to do."""
    config = load_config(Path(config_path) if config_path else None, overrides or [])
    version = source_version(config.data)
    record = config.work_dir / "watch" / f"{watch}.json"
    last = json.loads(record.read_text())["data_version"] if record.is_file() else None
    if version == last:
        message = f"data unchanged ({config.dataset_name}, version {version}): nothing to run"
        get_run_logger().info(message)
        return Completed(name="Unchanged", message=message)
    get_run_logger().info(
        "data %s: version %s (last run on %s): retraining", config.dataset_name, version, last
    )
    result = retrain(config_path, overrides, force)
    write_json(record, {"data_version": version, "parent_run_id": result.parent_run_id})
    return finished(result)


@contextlib.contextmanager
def parent_run(config: PipelineConfig, prefix: str) -> Iterator[tuple[Tracker, PipelineContext]]:
    """The MLflow parent run of a pipeline or sweep, with the whole config logged to it;
    ended FINISHED, FAILED or KILLED with the block."""
    work_dir = ensure_writable(config.work_dir)
    # Re-entrant: the CLI (or a scheduled run) already holds it; a plain Python caller gets
    # it here, before any run is opened.
    with work_dir_lock(work_dir, f"the {prefix} flow run {flow_run.name}"):
        tracker = Tracker(resolve_tracking_uri())
        experiment_id = tracker.runs.experiment_id(config.experiment_name)
        for orphan in tracker.orphans.close(experiment_id):
            get_run_logger().warning(
                "MLflow run %s was left RUNNING by a killed process: ended KILLED", orphan
            )
        parent_run_id = tracker.runs.create_run(
            experiment_id,
            f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={
                "prefect_flow_run_id": str(flow_run.id),
                PIPELINE_TAG[0]: PIPELINE_TAG[1],
                DATASET_TAG: config.dataset_name,
            },
        )
        get_run_logger().info("MLflow parent run %s on %s", parent_run_id, tracker.tracking_uri)
        with tracker.runs.running(parent_run_id):
            tracker.runs.log_params(parent_run_id, flatten(config.model_dump(mode="json")))
            tracker.runs.log_text(parent_run_id, config_to_yaml(config), "config.yaml")
            yield (
                tracker,
                PipelineContext(
                    tracking_uri=tracker.tracking_uri,
                    experiment_id=experiment_id,
                    parent_run_id=parent_run_id,
                    work_dir=str(work_dir),
                ),
            )


def record_reuse(tracker: Tracker, runner: Runner) -> None:
    """Which cached stages this run reused and which it computed, on the parent run."""
    tracker.runs.set_tags(
        runner.pipeline.parent_run_id,
        {
            "reused_stages": ",".join(runner.reused) or "none",
            "computed_stages": ",".join(runner.computed()) or "none",
        },
    )
    tracker.runs.log_metrics(runner.pipeline.parent_run_id, {"stages_reused": len(runner.reused)})


def forced_stages(
    config: PipelineConfig, force: Sequence[str] | None, stages: Sequence[Stage[Any]]
) -> frozenset[str]:
    """The stages to recompute whatever the cache says: those asked for, and the teacher
    when ``teacher.retrain`` is ``always``."""
    if config.teacher.retrain == "always" and any(s.name == "teacher" for s in stages):
        force = [*(force or []), "teacher"]
    return resolve_force(force, stages)


def run_pipeline(
    config: PipelineConfig,
    force: Sequence[str] | None,
    stages: Sequence[Stage[Any]] = PIPELINE,
) -> PipelineResult:
    """The body of both flows (and of any flow that runs another stage list): the stages in
    order, inside one MLflow parent run."""
    forced = forced_stages(config, force, stages)
    # This machine's cores, shared with any other kd running on it (components/cores.py).
    with share_cores(config.distributed.nproc), parent_run(config, "kd") as (tracker, pipeline):
        runner = Runner(pipeline, stages, forced)
        runner.run_all(config)
        record_reuse(tracker, runner)
    work_dir = Path(pipeline.work_dir)
    report = runner.refs.get("report")
    lines = [
        line
        for stage in runner.stages
        if stage.name in runner.refs
        for line in stage.summary(runner.refs[stage.name], work_dir)
    ]
    return PipelineResult(
        parent_run_id=pipeline.parent_run_id,
        tracking_uri=tracker.tracking_uri,
        ui_command=ui_command(tracker.tracking_uri),
        work_dir=pipeline.work_dir,
        refs=runner.refs,
        reused=runner.reused,
        summary_markdown=report.summary_markdown if isinstance(report, ReportRef) else "",
        lines=lines,
        refused=next((r.refusal() for r in runner.refs.values() if r.refusal()), None),
    )
