"""Models brought in from the store for a teacher source: URIs resolved to what they are now,
and their files fetched by flavour."""

from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch

from flows.tracking import Tracker, TrackingError


def test_uris_resolve_to_the_version_now_and_fetch_by_flavour(
    mlflow_store: str, tmp_path: Path
) -> None:
    tracker = Tracker(mlflow_store)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(
            model,
            name="teacher",
            registered_model_name="teacher",
            input_example=np.zeros((2, 1, 2, 2), np.float32),
            pip_requirements=["torch"],
        )
    tracker.registry.set_alias("teacher", "champion", "1")
    loader = tracker.models
    assert loader.resolve_model("models:/teacher/1")[1].startswith("models:/teacher/1 (run ")
    assert loader.resolve_model("models:/teacher@champion")[1] == (
        f"models:/teacher/1 (run {run.info.run_id})"
    )
    flavour, fetched = loader.fetch_model("models:/teacher@champion", tmp_path)
    assert flavour == "pytorch"
    x = torch.randn(2, 1, 2, 2)
    assert torch.equal(fetched(x), model(x))
    with pytest.raises(TrackingError, match="give a version or an alias"):
        loader.resolve_model("models:/teacher")
    with pytest.raises(TrackingError, match="cannot resolve"):
        loader.resolve_model("models:/nobody/1")
