"""The registry: a version from a logged model with its card and tags, aliases, lookups by tag,
and a version's files and training examples read back through the store."""

import json
from pathlib import Path

import numpy as np
import torch

from flows.tracking import Tracker


def _onnx(path: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 2, 2),), str(path), dynamo=False)
    return path


def test_a_version_is_registered_found_aliased_and_read_back(
    mlflow_store: str, tmp_path: Path
) -> None:
    tracker = Tracker(mlflow_store)
    experiment = tracker.runs.experiment_id("t")
    run = tracker.runs.create_run(experiment, "handoff")
    example = np.zeros((1, 1, 2, 2), np.float32)
    model = tracker.runs.log_onnx_model(run, _onnx(tmp_path / "m.onnx"), example, np.zeros((1, 3)))
    examples = tmp_path / "training_examples.json"
    examples.write_text(json.dumps({"examples": ["a1", "b2"]}))
    tracker.runs.log_artifact(run, examples)
    registry = tracker.registry
    version = registry.register("m", run, model, "challenger", {"sha": "x1"}, "card", "about m")
    assert version == "1" and registry.alias_version("m", "challenger") == "1"
    assert registry.alias_version("m", "champion") is None
    assert registry.version_tagged("m", "sha", "x1") == "1"
    assert registry.version_tagged("m", "sha", "other") is None
    registry.set_alias("m", "champion", version)
    registry.set_version_tags("m", version, {"promoted": True})
    assert registry.version_tags("m", version)["promoted"] == "True"
    files = registry.download_version("m", version, tmp_path / "download")
    assert list(files.rglob("*.onnx"))
    assert registry.training_examples("m", version, tmp_path / "examples") == ["a1", "b2"]
    assert registry.version_tagged("no-such-model", "sha", "x1") is None
