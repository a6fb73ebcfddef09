"""A model a registry resolves: a PyTorch module is exported with torch.export (loading it
runs none of its authors' code), an ONNX file is copied; the identity is the version the URI
names now. (The flows tests read real MLflow models.)"""

from pathlib import Path

import torch
from torch import nn

from components.config import MlflowTeacher
from components.teacher_sources import source_of
from components.teachers import load_teacher, prepare
from tests.components.teacher_sources.conftest import SPEC, FileRegistry


def test_a_pytorch_model_is_exported_and_gives_the_same_logits(
    classifier: nn.Module, tmp_path: Path
) -> None:
    registry = FileRegistry({"models:/teacher/1": ("pytorch", classifier)})
    config = MlflowTeacher(uri="models:/teacher/1")
    source = source_of(config)
    brought = source.bring_in(config, SPEC, tmp_path, registry)
    assert brought.format == "exported" and brought.path.name == "model.pt2"
    pixels = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    x = prepare(pixels, SPEC)
    assert torch.allclose(load_teacher(brought.path, "exported")(x), classifier(x), atol=1e-5)
    assert source.identity(config, registry) == {"model": "models:/teacher/1 (version 1)"}
    assert source.describe(config, brought) == "models:/teacher/1 (exported)"


def test_an_onnx_model_is_copied(classifier: nn.Module, tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"
    torch.onnx.export(classifier, (torch.zeros(1, 1, 28, 28),), str(onnx_path), dynamo=False)
    registry = FileRegistry({"models:/teacher@champion": ("onnx", onnx_path)})
    config = MlflowTeacher(uri="models:/teacher@champion")
    brought = source_of(config).bring_in(config, SPEC, tmp_path / "in", registry)
    assert brought.format == "onnx" and brought.path.read_bytes() == onnx_path.read_bytes()
