"""``teacher.source.kind: train`` (the default): the teacher stage trains the teacher here,
with the teacher recipe (components/recipes.py), on the data as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import TrainedTeacher
from components.teacher_sources import Brought, ModelStore
from components.teachers import InputSpec, TeacherError


class Train:
    trained_here = True

    def identity(self, source: TrainedTeacher, models: ModelStore) -> dict[str, Any]:
        return {}  # the recipe's config is the teacher stage's own reads

    def bring_in(
        self, source: TrainedTeacher, spec: InputSpec, directory: Path, models: ModelStore
    ) -> Brought:
        raise TeacherError("a teacher trained here is trained, not brought in")

    def describe(self, source: TrainedTeacher, brought: Brought) -> str:
        return "trained here"


IMPLEMENTATION = Train()
