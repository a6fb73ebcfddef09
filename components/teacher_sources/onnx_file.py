"""``teacher.source.kind: onnx``: an ONNX classifier as exporters write it (a file, or a model
directory; weights in external-data files beside it; a fixed batch size; float16; any opset
ONNX Runtime runs), checked and copied whole; the logit cache then runs it in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import OnnxTeacher
from components.io import sha256_files
from components.teacher_sources import Brought, ModelStore
from components.teachers import InputSpec, TeacherError


def model_files(path: Path) -> tuple[Path, list[Path]]:
    """The ONNX model ``path`` names (a file, or a directory holding one ``.onnx`` file) and
    the external-data files its initialisers point at (``torch.onnx.export`` writes the
    weights to ``<name>.onnx.data`` by default): every file the model is made of."""
    import onnx

    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            raise TeacherError(
                f"teacher path {path}: a model directory must hold exactly one .onnx file, "
                f"found {len(found)}"
            )
        path = found[0]
    if not path.is_file():
        raise TeacherError(f"teacher file {path}: does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise TeacherError(f"teacher file {path}: not a valid ONNX model ({err})") from err
    locations = sorted(
        {
            entry.value
            for tensor in proto.graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    external = [path.parent / location for location in locations]
    missing = [str(f) for f in external if not f.is_file()]
    if missing:
        raise TeacherError(
            f"teacher file {path}: its weights are stored in {', '.join(missing)}, which does "
            "not exist (copy the external-data files beside the model)"
        )
    return path, external


def import_onnx(path: Path, destination: Path) -> tuple[list[str] | None, list[Path]]:
    """An ONNX classifier (a file or a model directory), checked whole (its external data
    included) and copied with its external-data files beside ``destination``; returns the
    class names its metadata holds (as this pipeline's exports do) and the copied data
    files."""
    import json
    import shutil

    import onnx

    model, external = model_files(path)
    try:
        onnx.checker.check_model(str(model))  # by path: external data checked too
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as err:
        raise TeacherError(f"teacher file {model}: not a valid ONNX model ({err})") from err
    meta = {p.key: p.value for p in proto.metadata_props}
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, destination)
    copied = []
    for data in external:
        target = destination.parent / data.relative_to(model.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data, target)
        copied.append(target)
    names = json.loads(meta["class_labels"]) if "class_labels" in meta else None
    return names, copied


class OnnxFile:
    trained_here = False

    def identity(self, source: OnnxTeacher, models: ModelStore) -> dict[str, Any]:
        # The model and its external data as a whole: new weights are a new teacher.
        model, external = model_files(source.path)
        return {"sha256": sha256_files([model, *external])}

    def bring_in(
        self, source: OnnxTeacher, spec: InputSpec, directory: Path, models: ModelStore
    ) -> Brought:
        path = directory / "model.onnx"
        names, external = import_onnx(source.path, path)
        return Brought(path, "onnx", names, str(source.path), tuple(external))

    def describe(self, source: OnnxTeacher, brought: Brought) -> str:
        return f"onnx {source.path.name}"


IMPLEMENTATION = OnnxFile()
