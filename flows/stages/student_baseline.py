"""``student-baseline``: the student on labels alone, the control every KD gain is measured
against: the strongest fair one. Its candidates (``student.baseline``) are the K cached views
the distilled student sees or a fresh view every epoch, each with and without label
smoothing, all with the student's architecture, epochs, schedule and seed; the one with the
best validation accuracy is kept (its name in the run's ``chosen_candidate`` param, every
candidate's epochs under ``candidate.<name>.*``)."""

from __future__ import annotations

from components.config import PipelineConfig
from components.recipes import Recipe, baseline_candidates, student_recipe
from flows.stages.prepare_data import PrepareData
from flows.stages.training import TrainingStage


class StudentBaseline(TrainingStage):
    name = "student-baseline"
    version = 2  # 2: the best of its candidates on validation
    reads = ("student", "cache.views", "seed", "device", "distributed")
    needs = (PrepareData,)

    def recipe(self, config: PipelineConfig) -> Recipe:
        return student_recipe(config, distilled=False)

    def candidates(self, config: PipelineConfig) -> list[tuple[str, Recipe]]:
        return baseline_candidates(config)
