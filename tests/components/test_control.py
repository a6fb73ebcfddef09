"""Choosing the control's recipe on held-out folds, on tiny images."""

from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import load_config
from components.control import choose_control
from components.data import load_dataset, prepare_dataset
from components.recipes import CONTROL_CANDIDATES
from tests.helpers import quadrant_images


def test_the_best_mean_held_out_accuracy_is_chosen_and_recorded(tmp_path: Path) -> None:
    root = quadrant_images(tmp_path / "images", per_class=40)
    config = load_config(
        None,
        [
            "data.kind=image_folder",
            f"data.root={root}",
            "data.image_size=8",
            "data.channels=1",
            "student.model.name=cnn_tiny",
            "student.train.epochs=1",
            "cache.views=2",
        ],
    )
    info = prepare_dataset(config.data, config.split, tmp_path / "data")
    seen = []
    record = choose_control(
        config,
        load_dataset(info.path),
        units=2,
        device=torch.device("cpu"),
        on_result=lambda unit, name, accuracy: seen.append((unit, name)),
    )
    assert seen == [(u, n) for u in range(2) for n in CONTROL_CANDIDATES]
    means = {name: np.mean(c["held_out_accuracy"]) for name, c in record["candidates"].items()}
    assert record["chosen"] == max(means, key=means.get)
    views, smoothing = CONTROL_CANDIDATES[record["chosen"]]
    assert (record["views"], record["label_smoothing"]) == (views, smoothing)
    assert record["candidates"][record["chosen"]]["vs_chosen"]["estimate"] == 0
    assert sum(record["reselection_rate"].values()) == pytest.approx(1)
    held_out = len(load_dataset(info.path).splits["val"])
    assert record["units"] == 2 and record["held_out_n_per_unit"] == held_out
    with pytest.raises(ValueError, match="units must be between 1 and"):
        choose_control(config, load_dataset(info.path), 99, torch.device("cpu"))
