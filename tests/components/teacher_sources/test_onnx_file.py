"""An ONNX classifier, checked and copied, its class names read from its metadata."""

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from components.config import OnnxTeacher
from components.io import sha256_file
from components.teacher_sources import source_of
from components.teachers import TeacherError, load_teacher
from tests.components.teacher_sources.conftest import SPEC, FileRegistry


def _export(model: nn.Module, path: Path, classes: list[str] | None) -> Path:
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False)
    if classes is not None:
        proto = onnx.load(str(path))
        entry = proto.metadata_props.add()
        entry.key, entry.value = "class_labels", json.dumps(classes)
        onnx.save(proto, str(path))
    return path


def test_an_onnx_file_is_checked_copied_and_its_classes_read(
    classifier: nn.Module, tmp_path: Path
) -> None:
    path = _export(classifier, tmp_path / "teacher.onnx", [f"c{i}" for i in range(10)])
    config = OnnxTeacher(path=path)
    source = source_of(config)
    brought = source.bring_in(config, SPEC, tmp_path / "in", FileRegistry({}))
    assert brought.format == "onnx" and brought.class_names == [f"c{i}" for i in range(10)]
    assert sha256_file(brought.path) == sha256_file(path)
    x = torch.randn(1, 1, 28, 28)
    assert torch.allclose(load_teacher(brought.path, "onnx")(x), classifier(x), atol=1e-4)
    assert source.identity(config, FileRegistry({})) == {"sha256": sha256_file(path)}
    assert source.describe(config, brought) == "onnx teacher.onnx"


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "teacher.onnx"
    path.write_bytes(b"\x00not a model")
    with pytest.raises(TeacherError, match="not a valid ONNX model"):
        source_of(OnnxTeacher(path=path)).bring_in(
            OnnxTeacher(path=path), SPEC, tmp_path / "in", FileRegistry({})
        )
