"""Choosing the label-only control's recipe for a dataset and a student, once.

The control must be the strongest fair one, but training every candidate on every run costs
more than the distillation it is measured against, and one run's 500 validation images
cannot tell candidates 0.5 points apart. So the choice is made once, on held-out folds
(components/folds.py), and recorded: ``kd choose-control`` runs ``choose_control`` and
writes the record; later runs whose data and student match its scope
(``config.control_scope``) train that one recipe (``student.baseline``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from components.config import PipelineConfig, control_scope
from components.data import Dataset
from components.folds import fold_count, fold_dataset
from components.recipes import CONTROL_CANDIDATES, control_recipe, fit
from components.selection import best_mean_rate, paired_standard_error
from components.stats import mean_interval


def choose_control(
    config: PipelineConfig,
    dataset: Dataset,
    units: int,
    device: torch.device,
    on_result: Callable[[int, str, float], None] | None = None,
) -> dict[str, Any]:
    """Train every candidate of ``CONTROL_CANDIDATES`` on ``units`` units (unit u: fold u of
    the pool held out, seed ``config.seed + u``) and choose the best mean held-out accuracy.
    Returns the record: the choice, every candidate's per-unit accuracies and its difference
    from the chosen one, and how often a bootstrap over units would choose it again."""
    folds = fold_count(dataset)
    if not 1 <= units <= folds:
        raise ValueError(f"units must be between 1 and {folds} (the folds of this data)")
    started = time.perf_counter()
    held_out: dict[str, list[float]] = {name: [] for name in CONTROL_CANDIDATES}
    for unit in range(units):
        data = fold_dataset(dataset, unit, folds, config.split.seed)
        seeded = config.model_copy(update={"seed": config.seed + unit})
        for name, (views, smoothing) in CONTROL_CANDIDATES.items():
            recipe = control_recipe(seeded, views, smoothing)
            _, result = fit(recipe, data, device, desc=f"{name} unit {unit}")
            held_out[name].append(result.final["val_accuracy"])
            if on_result is not None:
                on_result(unit, name, result.final["val_accuracy"])
    scores = {name: np.array(values) for name, values in held_out.items()}
    chosen = max(scores, key=lambda name: scores[name].mean())
    views, smoothing = CONTROL_CANDIDATES[chosen]
    return {
        "chosen": chosen,
        "views": views,
        "label_smoothing": smoothing,
        "units": units,
        "folds": folds,
        "held_out_n_per_unit": len(dataset.splits["val"]),
        "candidates": {
            name: {
                "held_out_accuracy": s.tolist(),
                "mean": float(s.mean()),
                "vs_chosen": mean_interval(s - scores[chosen]).as_dict(),
                "vs_chosen_standard_error": paired_standard_error(s - scores[chosen]),
            }
            for name, s in scores.items()
        },
        "reselection_rate": best_mean_rate(scores),
        "scope": control_scope(config),
        "seconds": time.perf_counter() - started,
    }
