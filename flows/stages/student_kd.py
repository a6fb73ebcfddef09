"""``student-kd``: the student distilled from the logit cache; the live teacher is never
loaded, its knowledge arrives only as the cached logits of the exact views the student sees."""

from __future__ import annotations

from typing import Any

from components.config import PipelineConfig
from components.methods import check_views
from components.recipes import Recipe, student_recipe
from flows.refs import CacheRef
from flows.stage import PreflightError, StageContext
from flows.stages.training import TrainingStage


class StudentKD(TrainingStage):
    name = "student-kd"
    # Not student.baseline: the control's candidates do not change the distilled student.
    reads = (
        "student.model",
        "student.train",
        "cache.views",
        "distill",
        "seed",
        "device",
        "distributed",
    )
    needs = ("prepare-data", "logit-cache")

    def recipe(self, config: PipelineConfig) -> Recipe:
        return student_recipe(config, distilled=True)

    def preflight(self, config: PipelineConfig) -> None:
        super().preflight(config)
        try:
            check_views(config)  # the method's views against the augmentation
        except ValueError as err:
            raise PreflightError(str(err)) from None

    def teacher_logits(self, ctx: StageContext) -> tuple[Any | None, dict[str, Any]]:
        cache = ctx.input("logit-cache", CacheRef)
        return cache.open(ctx.work_dir), {"cache.key": cache.info.key, "cache.run_id": cache.run_id}
