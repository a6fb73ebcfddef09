"""``teacher``: train the teacher on the labels, a fresh augmented view every epoch."""

from __future__ import annotations

from components.config import PipelineConfig
from components.recipes import Recipe, teacher_recipe
from flows.stages.prepare_data import PrepareData
from flows.stages.training import TrainingStage


class Teacher(TrainingStage):
    name = "teacher"
    # The device and the process count change the weights (kernels, per-process BatchNorm).
    reads = ("teacher", "seed", "device", "distributed")
    needs = (PrepareData,)

    def recipe(self, config: PipelineConfig) -> Recipe:
        return teacher_recipe(config)
