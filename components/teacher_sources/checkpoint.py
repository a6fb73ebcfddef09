"""``teacher.source.kind: checkpoint``: a PyTorch file, a checkpoint this pipeline wrote or a
plain ``state_dict`` of a named architecture (ours, or torchvision's as torchvision builds
it), written as a checkpoint of ours."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.config import CheckpointTeacher
from components.io import sha256_file
from components.teacher_sources import Brought, ModelStore
from components.teachers import InputSpec, TeacherError


def infer_shapes(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(input channels, classes) of a plain classifier ``state_dict``: the first convolution's
    input channels and the last matrix's rows."""
    convs = [t for t in state.values() if t.ndim == 4]
    matrices = [t for t in state.values() if t.ndim == 2]
    if not convs or not matrices:
        raise TeacherError("the weights are not those of a convolutional classifier")
    return int(convs[0].shape[1]), int(matrices[-1].shape[0])


def _read_torch_file(path: Path) -> Any:
    if not path.is_file():
        raise TeacherError(f"teacher file {path}: does not exist")
    try:
        # weights_only: a teacher file is data, never code to unpickle.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TeacherError(f"teacher file {path}: not a PyTorch weights file ({err})") from err


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise TeacherError(f"{what}: the weights do not fit that architecture ({first})") from err


def import_checkpoint(path: Path, arch: str | None, destination: Path) -> list[str] | None:
    """A checkpoint of this pipeline, or a plain ``state_dict`` of ``arch`` (ours, or
    ``torchvision:<name>`` as torchvision builds it), as a checkpoint of ours at
    ``destination``; returns the class names the file knows (None: unnamed outputs)."""
    import shutil

    from components.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from components.models import TORCHVISION, build_model

    raw = _read_torch_file(path)
    if isinstance(raw, dict) and {"arch", "model"} <= set(raw):
        # One of ours: checked by loading it, then copied byte for byte (same sha256, so the
        # same logit cache as the run that trained it).
        try:
            load_checkpoint(path)
        except CheckpointError as err:
            raise TeacherError(str(err)) from err
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        names = raw.get("class_names")
        return list(names) if names is not None else None
    if arch is None:
        raise TeacherError(
            f"teacher file {path}: a plain state_dict; say which architecture it belongs to "
            "with teacher.source.arch"
        )
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, Mapping):
        raise TeacherError(f"teacher file {path}: holds no state_dict")
    native = arch.startswith(TORCHVISION)
    channels, classes = infer_shapes(state)
    size = 224 if native else 32  # only decides an adapted stem, which a teacher never has
    try:
        model = build_model(arch, channels, classes, size, native=native)
    except ValueError as err:
        raise TeacherError(f"teacher file {path}: {err}") from err
    _load_strict(model, state, f"teacher file {path} as {arch}")
    save_checkpoint(
        destination,
        model,
        arch=arch,
        in_channels=channels,
        num_classes=classes,
        image_size=size,
        native=native,
        config={"imported_from": str(path)},
        metrics={},
        dataset_fingerprint="",
    )
    return None


class Checkpoint:
    trained_here = False

    def identity(self, source: CheckpointTeacher, models: ModelStore) -> dict[str, Any]:
        return {"sha256": sha256_file(source.path)}

    def bring_in(
        self, source: CheckpointTeacher, spec: InputSpec, directory: Path, models: ModelStore
    ) -> Brought:
        path = directory / "model.pt"
        names = import_checkpoint(source.path, source.arch, path)
        return Brought(path, "checkpoint", names, str(source.path))

    def describe(self, source: CheckpointTeacher, brought: Brought) -> str:
        return source.arch or f"checkpoint {source.path.name}"


IMPLEMENTATION = Checkpoint()
