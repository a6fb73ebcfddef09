"""Run logging: the pipeline's parent and child runs, what they log (params, metrics, tags,
artifacts, dataset inputs, models), and reading them back as plain ``RunRecord`` values.

Everything goes through an ``MlflowClient`` and explicit run ids: no stage relies on the
fluent API's thread-local active run, so Prefect may run tasks on any thread.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)

from components.io import code_version
from flows.tracking.common import (
    DATASET_TAG,
    EXPERIMENT_KIND,
    HOST,
    OWNER_HOST,
    OWNER_PID,
    PIPELINE_TAG,
    SPLIT_CONTEXT,
    TrackingError,
)
from flows.tracking.fluent import fluent_tracking_uri, quiet_downloads, quiet_model_logging

_BATCH = 100  # MLflow accepts at most 100 params per log_batch call


def source_tags() -> dict[str, str]:
    """The code version on every run: MLflow's own ``mlflow.source.*`` tags (its UI's Source
    column), and kd's ``kd.*`` tags for what MLflow has no tag for."""
    code = code_version()
    tags = {
        MLFLOW_SOURCE_TYPE: "LOCAL",
        MLFLOW_SOURCE_NAME: code["source"],
        MLFLOW_GIT_COMMIT: code["git_commit"],
        MLFLOW_GIT_BRANCH: code["git_branch"],
        "kd.git_dirty": code["git_dirty"],
    }
    tags |= {f"kd.{key}": value for key, value in code.items() if key.endswith("_version")}
    return tags


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as read back: ids, name, status, and its latest params/metrics/tags."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    start_time: int
    end_time: int | None  # None while running
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, run: Run) -> RunRecord:
        return cls(
            run_id=run.info.run_id,
            name=run.data.tags.get(MLFLOW_RUN_NAME, ""),
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            start_time=run.info.start_time or 0,
            end_time=run.info.end_time,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            tags=dict(run.data.tags),
        )


@dataclass(frozen=True)
class MetricSink:
    """Logs metrics to one run: picklable, so a launched training process can use it."""

    tracking_uri: str
    run_id: str

    def log(self, metrics: dict[str, float], step: int = 0) -> None:
        RunLog(MlflowClient(self.tracking_uri), self.tracking_uri).log_metrics(
            self.run_id, metrics, step
        )


class RunLog:
    """The runs of one MLflow store: created, logged to, ended, read back."""

    def __init__(self, client: MlflowClient, tracking_uri: str) -> None:
        self.client, self.tracking_uri = client, tracking_uri

    def experiment_id(self, name: str) -> str:
        """The experiment's id (created when new), marked as a model-training experiment so
        that MLflow 3's UI opens on its runs rather than on GenAI traces."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            experiment_id = self.client.create_experiment(name)
        else:
            experiment_id = experiment.experiment_id
            if experiment.tags.get(EXPERIMENT_KIND[0]) == EXPERIMENT_KIND[1]:
                return experiment_id
        self.client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
        return experiment_id

    def create_run(
        self,
        experiment_id: str,
        name: str,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        # Which process owns the run: a later run can close it if that process was killed.
        all_tags = {MLFLOW_RUN_NAME: name, OWNER_HOST: HOST, OWNER_PID: str(os.getpid())}
        all_tags |= source_tags()
        all_tags |= tags or {}
        if parent_run_id is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    @contextlib.contextmanager
    def running(self, run_id: str) -> Iterator[str]:
        """End the run FINISHED, FAILED (error recorded) or KILLED (Ctrl-C), never RUNNING."""
        try:
            yield run_id
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
            raise
        except BaseException as err:
            self.client.set_tag(run_id, "error", f"{type(err).__name__}: {err}"[:5000])
            self.client.log_text(run_id, traceback.format_exc(), "error.txt")
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    @contextlib.contextmanager
    def child_run(
        self, experiment_id: str, parent_run_id: str, name: str, tags: dict[str, str] | None = None
    ) -> Iterator[str]:
        run_id = self.create_run(experiment_id, name, parent_run_id, tags)
        with self.running(run_id):
            yield run_id

    def log_dataset_inputs(
        self, run_id: str, name: str, digest: str, source: str, splits: dict[str, int]
    ) -> None:
        """The data splits a run read, as MLflow dataset inputs (the runs table's Dataset
        column): ``<name>/<split>``, digest = the dataset fingerprint, with the split's
        context (training, validation, testing) and its size."""
        inputs = [
            DatasetInput(
                dataset=Dataset(
                    name=f"{name}/{split}",
                    digest=digest[:36],
                    source_type="local",
                    source=json.dumps({"uri": source}),
                    profile=json.dumps({"num_rows": rows}),
                ),
                tags=[InputTag(MLFLOW_DATASET_CONTEXT, SPLIT_CONTEXT[split])],
            )
            for split, rows in splits.items()
        ]
        self.client.log_inputs(run_id, datasets=inputs)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[start : start + _BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        timestamp = mlflow.utils.time.get_current_time_millis()
        items = [Metric(k, v, timestamp, step) for k, v in finite.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[start : start + _BATCH])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(
        self, run_id: str, directory: Path | str, artifact_path: str | None = None
    ) -> None:
        self.client.log_artifacts(run_id, str(directory), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_dict(self, run_id: str, payload: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, payload, artifact_file)

    def copy_outcome(self, source_run_id: str, target_run_id: str) -> bool:
        """Params and latest metrics of an earlier run, so a reusing run compares like it;
        False when that run is not in this store (the work dir was moved between stores)."""
        try:
            data = self.client.get_run(source_run_id).data
        except MlflowException:
            return False
        self.log_params(target_run_id, data.params)
        self.log_metrics(target_run_id, data.metrics)
        return True

    @contextlib.contextmanager
    def _model_logging(self, run_id: str) -> Iterator[None]:
        """The block in which a model is logged for ``run_id``: MLflow's fluent API on this
        store, the model filed under the run's experiment, MLflow's advice silenced."""
        experiment_id = self.client.get_run(run_id).info.experiment_id
        with fluent_tracking_uri(self.tracking_uri, experiment_id), quiet_model_logging():
            yield

    def log_onnx_model(
        self,
        run_id: str,
        model_path: Path,
        example: np.ndarray,
        outputs: np.ndarray,
        name: str = "model",
    ) -> tuple[str, str]:
        """The ONNX model through MLflow 3's model API: a logged model linked to the run (the
        runs table's Models column), with signature and input example, and with the run's
        metrics at step 0 linked to it. Returns (model id, model URI)."""
        import mlflow.onnx
        import onnx
        import onnxruntime
        from mlflow.models import infer_signature

        with self._model_logging(run_id):
            info = mlflow.onnx.log_model(
                onnx.load(str(model_path)),
                name=name,
                signature=infer_signature(example, outputs),
                input_example=example,
                save_as_external_data=False,
                onnx_execution_providers=["CPUExecutionProvider"],
                # What serving it takes, stated: MLflow would otherwise infer it by importing
                # the model in a subprocess (2 s per run).
                pip_requirements=[
                    f"mlflow=={mlflow.__version__}",
                    f"onnx=={onnx.__version__}",
                    f"onnxruntime=={onnxruntime.__version__}",
                ],
                run_id=run_id,
            )
        return str(info.model_id), str(info.model_uri)

    def log_pytorch_model(
        self,
        run_id: str,
        model: Any,
        channels: int,
        size: tuple[int, int],
        step: int = 0,
        name: str = "model",
    ) -> str:
        """A PyTorch model through MLflow 3's model API, linked to the run and to its
        metrics at ``step``; ``mlflow.pytorch.load_model(f"models:/{id}")`` loads it."""
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        example = torch.zeros(1, channels, *size)
        with torch.no_grad():
            outputs = model(example).numpy()
        with self._model_logging(run_id):
            info = mlflow.pytorch.log_model(
                model,
                name=name,
                signature=infer_signature(example.numpy(), outputs),
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__}"],
                # pickle: our own modules, saved in milliseconds; "pt2" would trace each model
                serialization_format="pickle",
                run_id=run_id,
                step=step,
            )
        return str(info.model_id)

    def link_model(self, run_id: str, model_id: str) -> None:
        """Show a logged model as an output of another run too (the pipeline's parent run
        shows the model it handed off)."""
        self.client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])

    def logged_model_ids(self, run_ids: Sequence[str]) -> list[str]:
        """The logged models the runs output (MLflow 3 model outputs), in run order."""
        found = []
        for run_id in run_ids:
            outputs = self.client.get_run(run_id).outputs
            found += [output.model_id for output in (outputs.model_outputs if outputs else [])]
        return found

    def run(self, run_id: str) -> RunRecord:
        try:
            return RunRecord.of(self.client.get_run(run_id))
        except MlflowException as err:
            raise TrackingError(f"run {run_id}: not found ({err})") from err

    def pipeline_runs(
        self,
        experiment_name: str,
        last: int | None = None,
        run_ids: Sequence[str] = (),
        dataset: str | None = None,
    ) -> list[RunRecord]:
        """Pipeline parent runs, newest first: the given ids, else the last ``last`` finished
        (of ``dataset`` only, when given: see ``DATASET_TAG``)."""
        if run_ids:
            runs = [self.run(run_id) for run_id in run_ids]
            for run in runs:
                if run.tags.get(PIPELINE_TAG[0]) != PIPELINE_TAG[1]:
                    raise TrackingError(f"run {run.run_id}: not a kd-pipeline parent run")
            return runs
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise TrackingError(
                f"experiment {experiment_name!r}: not found on this tracking server"
            )
        # Finished runs only: a failed run's figures may stop anywhere.
        found = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=(
                f"tags.{PIPELINE_TAG[0]} = '{PIPELINE_TAG[1]}' and attributes.status = 'FINISHED'"
                + (f" and tags.{DATASET_TAG} = '{dataset}'" if dataset else "")
            ),
            order_by=["attributes.start_time DESC"],
            max_results=last or 1000,
        )
        return [RunRecord.of(run) for run in found]

    def children(self, parent: RunRecord) -> dict[str, RunRecord]:
        """Child runs by name; of two with one name (a retried stage), the later one."""
        found = self.client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent.run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        return {child.data.tags.get(MLFLOW_RUN_NAME, ""): RunRecord.of(child) for child in found}

    def artifact_text(self, run_id: str, artifact_file: str) -> str:
        """A text artifact of a run, read through the store (local or remote)."""
        with tempfile.TemporaryDirectory() as scratch, quiet_downloads():
            return Path(self.client.download_artifacts(run_id, artifact_file, scratch)).read_text()
