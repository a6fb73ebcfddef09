"""The one wrapper every stage runs in: Prefect task, MLflow child run, caching, reuse.

For each stage the runner
1. computes its fingerprint from its declarations (``Stage.fingerprint``);
2. runs it as the Prefect task named after it. A cached stage is keyed on
   ``<name>-<fingerprint>`` (never on the run id) and its reference is persisted as JSON
   under ``work_dir/prefect-results``, beside the files it points at;
3. inside the task, opens the MLflow child run of that name, logs the declared config
   sections and the fingerprint, calls ``Stage.run`` and logs the ``Outcome``;
4. when Prefect answers from its cache instead, checks the reference with ``verify()``. A
   damaged one (file gone or changed) is recomputed, with a warning naming the file; a sound
   one gets a child run of its own, tagged ``reused`` with the run that did the work and that
   run's params and metrics, so runs compare side by side.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import State

from components.config import PipelineConfig
from flows.stage import (
    ConfigView,
    PipelineContext,
    Record,
    Ref,
    Stage,
    StageContext,
    cached_names,
    check_pipeline,
    config_params,
)
from flows.tracking import Tracker


def _cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return f"{parameters['stage'].name}-{parameters['fingerprint']}"


def _execute(
    stage: Stage[Any],
    config: PipelineConfig,
    pipeline: PipelineContext,
    inputs: dict[str, Ref],
    fingerprint: str,
    run_name: str,
    stages: tuple[Stage[Any], ...],
    forced: bool = False,
) -> Ref:
    """The body of every stage's Prefect task: its MLflow child run around ``Stage.run``."""
    tracker = Tracker(pipeline.tracking_uri)
    declared = (*stage.reads, *stage.settings)
    with tracker.runs.child_run(pipeline.experiment_id, pipeline.parent_run_id, run_name) as run_id:
        tracker.runs.log_params(
            run_id,
            {
                **config_params(config, declared),
                "stage.fingerprint": fingerprint,
                **{f"input.{name}.run_id": ref.run_id for name, ref in inputs.items()},
            },
        )
        ctx = StageContext(
            stage=stage,
            config=cast(PipelineConfig, ConfigView(config, frozenset(declared), stage.name)),
            inputs=inputs,
            fingerprint=fingerprint,
            run_name=run_name,
            run_id=run_id,
            pipeline=pipeline,
            stages=stages,
            tracker=tracker,
            log=get_run_logger(),
            forced=forced,
        )
        outcome = stage.run(ctx)
        data = next((r for r in (*inputs.values(), outcome.ref) if r.dataset() is not None), None)
        if stage.splits and data is not None:
            # On the stage's run; and, from the stage that prepares the data, on the parent
            # run too: the pipeline's row in the runs table shows the data it ran on.
            owners = [run_id] + ([pipeline.parent_run_id] if data is outcome.ref else [])
            digest, sizes = cast(tuple[str, dict[str, int]], data.dataset())
            for owner in owners:
                tracker.runs.log_dataset_inputs(
                    owner,
                    config.dataset_name,
                    digest,
                    config.data_source_uri,
                    {split: sizes[split] for split in stage.splits},
                )
        log_record(tracker, run_id, outcome.record, model_name=stage.name)
        log_record(tracker, pipeline.parent_run_id, outcome.parent)
        return outcome.ref.model_copy(update={"run_id": run_id})


def log_record(tracker: Tracker, run_id: str, record: Record, model_name: str = "model") -> None:
    """What a stage hands the tracker, logged to ``run_id``; its model under ``model_name``
    (the stage's name: MLflow's Models view tells the teacher from the students)."""
    tracker.runs.log_params(run_id, record.params)
    tracker.runs.log_metrics(run_id, record.metrics, step=record.step)
    tracker.runs.set_tags(run_id, record.tags)
    for path, folder in record.files:
        if path.is_dir():
            tracker.runs.log_artifacts(run_id, path, folder)
        else:
            tracker.runs.log_artifact(run_id, path, folder)
    for name, text in record.texts.items():
        if isinstance(text, dict):
            tracker.runs.log_dict(run_id, text, name)
        else:
            tracker.runs.log_text(run_id, text, name)
    if record.model is not None:
        # After the metrics: MLflow links the run's metrics at this step to the model.
        tracker.runs.log_pytorch_model(run_id, *record.model, step=record.step, name=model_name)


@functools.cache
def stage_task(name: str, cached: bool) -> Task[..., Ref]:
    """The Prefect task of a stage, named after it."""
    if cached:
        return task(
            name=name, cache_key_fn=_cache_key, persist_result=True, result_serializer="json"
        )(_execute)
    return task(name=name, cache_policy=NO_CACHE)(_execute)


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A table in the Prefect UI (artifacts), beside the flow run."""
    create_table_artifact(key=key, table=rows, description=description)


class Runner:
    """Runs stages in order inside one pipeline run, keeping each one's reference."""

    def __init__(
        self,
        pipeline: PipelineContext,
        stages: Sequence[Stage[Any]],
        force: frozenset[str] = frozenset(),
    ) -> None:
        self.pipeline = pipeline
        self.stages = tuple(stages)
        check_pipeline(self.stages)
        self.force = force
        self.tracker = Tracker(pipeline.tracking_uri)
        # Beside the files the references point at: delete the work dir and both go together.
        self.storage = Path(pipeline.work_dir) / "prefect-results"
        self.refs: dict[str, Ref] = {}
        self.reused: dict[str, str] = {}  # stage -> the MLflow run whose result was reused

    @property
    def work_dir(self) -> Path:
        return Path(self.pipeline.work_dir)

    def run_all(self, config: PipelineConfig, stages: Sequence[Stage[Any]] | None = None) -> None:
        for stage in self.stages if stages is None else stages:
            if stage.enabled(config):
                self.refs[stage.name] = self.run(stage, config)

    def computed(self) -> list[str]:
        return [name for name in cached_names(self.stages) if name not in self.reused]

    def _inputs(self, stage: Stage[Any]) -> dict[str, Ref]:
        return {need: self.refs[need] for need in stage.needs}

    def _configured(self, stage: Stage[Any], refresh: bool, run_name: str) -> Task[..., Ref]:
        options: dict[str, Any] = {"task_run_name": run_name}
        if stage.cached:
            options |= {"result_storage": self.storage, "refresh_cache": refresh}
        return stage_task(stage.name, stage.cached).with_options(**options)

    def _call(
        self, stage: Stage[Any], config: PipelineConfig, run_name: str, forced: bool
    ) -> dict[str, Any]:
        """The stage task's arguments, by name (``_execute``'s parameters)."""
        inputs = self._inputs(stage)
        return {
            "stage": stage,
            "config": config,
            "pipeline": self.pipeline,
            "inputs": inputs,
            "fingerprint": stage.fingerprint(config, inputs),
            "run_name": run_name,
            "stages": self.stages,
            "forced": forced,
        }

    def run(self, stage: Stage[Any], config: PipelineConfig, run_name: str | None = None) -> Ref:
        name = run_name or stage.name
        forced = stage.name in self.force
        call = self._call(stage, config, name, forced)
        if forced:
            get_run_logger().info(
                "%s: forced, recomputing (fingerprint %s)", name, call["fingerprint"]
            )
        state = cast(State[Any], self._configured(stage, forced, name)(**call, return_state=True))
        return self._settle(state, call)

    def run_many(self, stage: Stage[Any], configs: dict[str, PipelineConfig]) -> dict[str, Ref]:
        """The same stage on several configs at once, through the flow's task runner;
        ``configs``: MLflow run name -> config."""
        forced = stage.name in self.force
        calls = {name: self._call(stage, config, name, forced) for name, config in configs.items()}
        futures = {
            name: self._configured(stage, forced, name).submit(**call)
            for name, call in calls.items()
        }
        results = {}
        for name, future in futures.items():
            future.wait()
            results[name] = self._settle(future.state, calls[name])
        return results

    def _settle(self, state: State[Any], call: dict[str, Any]) -> Ref:
        """The stage's reference; a cached one is checked, and its reuse recorded in MLflow."""
        ref = cast(Ref, state.result())
        if state.name != "Cached":
            return ref
        stage, name = call["stage"], call["run_name"]
        problem = ref.verify(self.work_dir)
        if problem is not None:
            get_run_logger().warning(
                "%s: the cached result cannot be used (%s); recomputing", name, problem
            )
            task = self._configured(stage, True, name)
            fresh = cast(State[Any], task(**call, return_state=True))
            return cast(Ref, fresh.result())
        self._record_reuse(name, f"{stage.name}-{call['fingerprint']}", ref)
        return ref

    def _record_reuse(self, name: str, cache_key: str, ref: Ref) -> None:
        tracker, pipeline = self.tracker, self.pipeline
        run_id = tracker.runs.create_run(
            pipeline.experiment_id,
            name,
            pipeline.parent_run_id,
            tags={
                "reused": "true",
                "reused_from_run_id": ref.run_id,
                "prefect_cache_key": cache_key,
            },
        )
        with tracker.runs.running(run_id):
            if not tracker.runs.copy_outcome(ref.run_id, run_id):
                tracker.runs.set_tags(run_id, {"reused_from_run_found": "false"})
        self.reused[name] = ref.run_id
        get_run_logger().info(
            "%s: inputs unchanged (Prefect cache %s): reused the result of MLflow run %s",
            name,
            cache_key,
            ref.run_id,
        )
