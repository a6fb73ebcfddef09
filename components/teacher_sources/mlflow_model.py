"""``teacher.source.kind: mlflow``: a model a model registry resolves (``models:/name@alias``,
``models:/name/3``, ``runs:/<id>/<path>``), ONNX or PyTorch flavour. A PyTorch model is
exported with ``torch.export``, so that loading it again runs none of its authors' Python.
The registry is given (``ModelStore``; flows/ gives MLflow's): nothing here imports MLflow."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.config import MlflowTeacher
from components.teacher_sources import Brought, ModelStore
from components.teacher_sources.onnx_file import import_onnx
from components.teachers import InputSpec, TeacherError, prepare


def import_module(module: nn.Module, spec: InputSpec, destination: Path) -> None:
    """A PyTorch module of unknown code (an MLflow PyTorch model) as an exported program
    (``torch.export``, dynamic batch) traced on the teacher's input: loading it later runs a
    graph of tensor operations, none of its authors' Python."""
    from components.io import atomic_path

    example = prepare(torch.zeros(2, spec.channels, *spec.image_size), spec)
    batch = torch.export.Dim("batch", min=1)
    try:
        with contextlib.suppress(NotImplementedError):  # an exported program has no modes
            module.eval()
        program = torch.export.export(module.cpu(), (example,), dynamic_shapes=({0: batch},))
    except Exception as err:
        reason = str(err).splitlines()[0]
        raise TeacherError(f"the PyTorch model cannot be exported on its input ({reason})") from err
    with atomic_path(destination) as tmp:
        torch.export.save(program, str(tmp))


class MlflowModel:
    trained_here = False

    def identity(self, source: MlflowTeacher, models: ModelStore) -> dict[str, Any]:
        # The version an alias points at now: a new version invalidates what depends on it.
        return {"model": models.resolve_model(source.uri)[1]}

    def bring_in(
        self, source: MlflowTeacher, spec: InputSpec, directory: Path, models: ModelStore
    ) -> Brought:
        with tempfile.TemporaryDirectory() as scratch:
            flavour, found = models.fetch_model(source.uri, Path(scratch))
            if flavour == "onnx":
                path = directory / "model.onnx"
                names, external = import_onnx(found, path)
                return Brought(path, "onnx", names, source.uri, tuple(external))
            path = directory / "model.pt2"
            import_module(found, spec, path)
            return Brought(path, "exported", None, source.uri)

    def describe(self, source: MlflowTeacher, brought: Brought) -> str:
        return f"{source.uri} ({brought.format})"


IMPLEMENTATION = MlflowModel()
