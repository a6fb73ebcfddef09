"""``teacher.source.kind: onnx``: an ONNX classifier file, checked and copied; the logit
cache then runs it in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import OnnxTeacher
from components.io import sha256_file
from components.teacher_sources import Brought, ModelStore
from components.teachers import InputSpec, TeacherError


def import_onnx(path: Path, destination: Path) -> list[str] | None:
    """An ONNX classifier, checked and copied; returns its class names when its metadata
    has them (as this pipeline's exports do)."""
    import json
    import shutil

    import onnx

    if not path.is_file():
        raise TeacherError(f"teacher file {path}: does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as err:
        raise TeacherError(f"teacher file {path}: not a valid ONNX model ({err})") from err
    meta = {p.key: p.value for p in proto.metadata_props}
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, destination)
    return json.loads(meta["class_labels"]) if "class_labels" in meta else None


class OnnxFile:
    trained_here = False

    def identity(self, source: OnnxTeacher, models: ModelStore) -> dict[str, Any]:
        return {"sha256": sha256_file(source.path)}

    def bring_in(
        self, source: OnnxTeacher, spec: InputSpec, directory: Path, models: ModelStore
    ) -> Brought:
        path = directory / "model.onnx"
        return Brought(path, "onnx", import_onnx(source.path, path), str(source.path))

    def describe(self, source: OnnxTeacher, brought: Brought) -> str:
        return f"onnx {source.path.name}"


IMPLEMENTATION = OnnxFile()
