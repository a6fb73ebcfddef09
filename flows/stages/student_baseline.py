"""``student-baseline``: the student on labels alone, the control every KD gain is measured
against; the same budget, seed and K cached views as the distilled student."""

from __future__ import annotations

from components.config import PipelineConfig
from components.recipes import Recipe, student_recipe
from flows.stages.prepare_data import PrepareData
from flows.stages.training import TrainingStage


class StudentBaseline(TrainingStage):
    name = "student-baseline"
    reads = ("student", "cache.views", "seed", "device", "distributed")
    needs = (PrepareData,)

    def recipe(self, config: PipelineConfig) -> Recipe:
        return student_recipe(config, distilled=False)
