"""Training in two launched processes (gloo on CPU): DDP keeps them one model."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import AugmentConfig, TrainConfig
from components.data import Dataset, load_dataset
from components.distributed import (
    join_process_group,
    launch,
    leave_process_group,
    rank_and_world,
    worker_device,
)
from components.models import build_model
from components.training import train_classifier

TRAIN = TrainConfig(epochs=1, batch_size=256, augment=AugmentConfig(enabled=False))


def _train_share(dataset_path: str, model: torch.nn.Module) -> dict:
    """Module level, so the launched processes can import it."""
    rank, world = rank_and_world()
    device = worker_device("cpu")
    join_process_group(device)
    try:
        result = train_classifier(
            model, load_dataset(dataset_path), TRAIN, seed=0, device=device, view_seed=0,
            rank=rank, world=world,
        )  # fmt: skip
    finally:
        leave_process_group()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    return {"rank": rank, "world": world, "weights": weights, "final": result.final}


@pytest.mark.slow
def test_two_processes_train_one_model(mnist_dataset: Dataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 1, 10)
    initial = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    results = launch(_train_share, 2, mnist_dataset.info.path, model)
    assert sorted(results) == [0, 1]
    assert [results[r]["rank"] for r in (0, 1)] == [0, 1]
    assert {r["world"] for r in results.values()} == {2}
    # gradients were averaged: both processes end with the same weights, and they moved
    assert np.array_equal(results[0]["weights"], results[1]["weights"])
    assert not np.allclose(results[0]["weights"], initial)
    # and it learned something (chance is 0.1) in one short epoch on half a batch each
    assert results[0]["final"]["val_accuracy"] > 0.15
    assert results[0]["final"] == results[1]["final"]


def _environment() -> tuple[str | None, ...]:
    return tuple(os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "KD_LAUNCH_PROBE", "KD_GONE"))


@pytest.mark.slow
def test_a_launched_process_sees_the_environment_as_it_is_at_the_launch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # launched processes fork from a server started at the first launch: a variable set or
    # removed after that still reaches them as it is now, under the launcher's own
    monkeypatch.setenv("KD_LAUNCH_PROBE", "first")
    monkeypatch.setenv("KD_GONE", "here")
    assert launch(_environment, 2) == {
        0: ("0", "2", "first", "here"),
        1: ("1", "2", "first", "here"),
    }
    monkeypatch.setenv("KD_LAUNCH_PROBE", "second")
    monkeypatch.delenv("KD_GONE")
    assert launch(_environment, 2) == {0: ("0", "2", "second", None), 1: ("1", "2", "second", None)}
