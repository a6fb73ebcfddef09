"""The one thin layer between kd-pipeline and MLflow: this package alone imports it, one
module per job.

- ``runs``: run logging and reading runs back (``RunLog``, ``RunRecord``, ``MetricSink``);
- ``registry``: registered models, versions and aliases (``Registry``);
- ``models``: models brought in from a store, for teacher sources (``ModelLoader``);
- ``cleanup``: runs left RUNNING by killed processes (``OrphanRuns``);
- ``fluent``: MLflow's process-wide state, where a call needs it;
- ``common``: the names the rest of the tree uses without importing MLflow.

A ``Tracker`` holds one of each for one store: ``tracker.runs.log_params(...)``,
``tracker.registry.register(...)``, ``tracker.models``, ``tracker.orphans.close(...)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flows.tracking.common import (
    DATASET_TAG,
    PIPELINE_TAG,
    TrackingError,
    resolve_tracking_uri,
    ui_command,
)

if TYPE_CHECKING:
    from flows.tracking.cleanup import OrphanRuns
    from flows.tracking.models import ModelLoader
    from flows.tracking.registry import Registry
    from flows.tracking.runs import RunLog

__all__ = [
    "DATASET_TAG",
    "PIPELINE_TAG",
    "Tracker",
    "TrackingError",
    "resolve_tracking_uri",
    "ui_command",
]


class Tracker:
    """One MLflow store (runs and registry together), by job. MLflow is imported when the
    first one is made, not when this package is (see common.py)."""

    runs: RunLog
    registry: Registry
    models: ModelLoader
    orphans: OrphanRuns

    def __init__(self, tracking_uri: str) -> None:
        from mlflow.tracking import MlflowClient

        from flows.tracking.cleanup import OrphanRuns
        from flows.tracking.models import ModelLoader
        from flows.tracking.registry import Registry
        from flows.tracking.runs import RunLog

        self.tracking_uri = tracking_uri
        # The registry lives in the same store or server as the runs.
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        self.runs = RunLog(client, tracking_uri)
        self.registry = Registry(client, tracking_uri)
        self.models = ModelLoader(client, tracking_uri)
        self.orphans = OrphanRuns(client)
