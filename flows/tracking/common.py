"""What the rest of kd-pipeline names about MLflow without importing it: tag names, the
tracking URI, the error of a store that cannot answer. Importing this module (and the
``flows.tracking`` package) costs nothing, so the pre-flight checks and ``kd config`` run
before MLflow is loaded."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

HOST = socket.gethostname()
# Which process owns a run: a later run can close it if that process was killed (cleanup.py).
OWNER_HOST, OWNER_PID = "kd_host", "kd_pid"
PIPELINE_TAG = ("pipeline", "kd-pipeline")  # set on every parent run (kd run, kd sweep)
# What the run's data is (PipelineConfig.dataset_name), on parent runs and registered versions:
# promotion, the run report and kd compare compare runs of one dataset only.
DATASET_TAG = "dataset"

SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "testing"}
# MLflow 3's UI opens an experiment on this kind's view (the runs table), not on traces.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class TrackingError(ValueError):
    """No such experiment or run, or a run that is not a kd-pipeline parent run."""


def resolve_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else MLflow's own default store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    import mlflow  # its default store, asked only when no URI is set

    return str(mlflow.get_tracking_uri())


def ui_command(tracking_uri: str) -> str:
    """The exact command that opens the MLflow UI on this store."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https"):
        return f"open {tracking_uri} in a browser (the server's own UI)"
    if parsed.scheme == "sqlite":
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return f"mlflow ui --backend-store-uri sqlite:///{db}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"
