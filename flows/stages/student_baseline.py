"""``student-baseline``: the student on labels alone, the control every KD gain is measured
against, and the strongest fair one: the student's architecture, budget and seed, trained
with the recipe ``student.baseline`` names (cached or fresh views, label smoothing), which
was chosen on held-out folds (by benchmarks/distill_quality.py for the shipped default, by
``kd choose-control`` for other data). One control, trained once: choosing among candidates
on every run would cost more than the distillation it is measured against."""

from __future__ import annotations

from typing import Any

from components.config import PipelineConfig
from components.recipes import Recipe, baseline_recipe, control_name
from flows.stage import StageContext
from flows.stages.training import TrainingStage


class StudentBaseline(TrainingStage):
    name = "student-baseline"
    version = 3  # 3: one recipe, chosen on held-out folds (2: the best of four per run)
    # Not student.baseline.chosen_by: where the recipe came from does not change the control.
    reads = (
        "student.model",
        "student.train",
        "student.baseline.views",
        "student.baseline.label_smoothing",
        "cache.views",
        "seed",
        "device",
        "distributed",
    )
    settings = ("student.baseline.chosen_by",)
    needs = ("prepare-data",)

    def recipe(self, config: PipelineConfig) -> Recipe:
        return baseline_recipe(config)

    def teacher_logits(self, ctx: StageContext) -> tuple[Any | None, dict[str, Any]]:
        baseline = ctx.config.student.baseline
        name = control_name(baseline.views, baseline.label_smoothing)
        return None, {"control.recipe": name, "control.chosen_by": baseline.chosen_by}
