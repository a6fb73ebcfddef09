"""MLflow's process-wide state, set for a block and restored exactly."""

import os
from pathlib import Path

import mlflow
import pytest

from flows.tracking.fluent import fluent_tracking_uri


def test_model_logging_leaves_the_tracking_uri_as_the_user_set_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mine.db")
    with fluent_tracking_uri(store):
        assert mlflow.get_tracking_uri() == store
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///mine.db"  # not deleted, not pinned
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///changed.db")
    assert mlflow.get_tracking_uri() == "sqlite:///changed.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with fluent_tracking_uri(store):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
    # the experiment a model is filed under, for the block only; the user's own names kept
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    with fluent_tracking_uri(store, "7"):
        assert os.environ["MLFLOW_EXPERIMENT_ID"] == "7"
        assert "MLFLOW_EXPERIMENT_NAME" not in os.environ
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "mine"
