"""``teacher.source.kind: torchvision``: a torchvision classification architecture, built as
torchvision builds it, with a local weights file (a ``state_dict``; never a download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import TorchvisionTeacher
from components.io import sha256_file
from components.models import TORCHVISION
from components.teacher_sources import Brought, ModelStore
from components.teacher_sources.checkpoint import import_checkpoint
from components.teachers import InputSpec


class TorchvisionWeights:
    trained_here = False

    def identity(self, source: TorchvisionTeacher, models: ModelStore) -> dict[str, Any]:
        return {"sha256": sha256_file(source.weights)}

    def bring_in(
        self, source: TorchvisionTeacher, spec: InputSpec, directory: Path, models: ModelStore
    ) -> Brought:
        path = directory / "model.pt"
        import_checkpoint(source.weights, f"{TORCHVISION}{source.name}", path)
        return Brought(path, "checkpoint", None, f"torchvision:{source.name} + {source.weights}")

    def describe(self, source: TorchvisionTeacher, brought: Brought) -> str:
        return f"torchvision:{source.name}"


IMPLEMENTATION = TorchvisionWeights()
