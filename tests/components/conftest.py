"""Fixtures shared by the component tests."""

from pathlib import Path

import pytest
import torch

from components.config import ExportConfig
from components.data import Dataset
from components.handoff import write_bundle
from components.models import build_model
from components.onnx_export import export_onnx


@pytest.fixture
def bundle(tmp_path: Path, mnist_dataset: Dataset) -> Path:
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 1, 10).eval()
    result = export_onnx(model, mnist_dataset, tmp_path / "m.onnx", ExportConfig(int8=False), {})
    return write_bundle(
        tmp_path / "bundle",
        Path(result.path),
        None,
        mnist_dataset.info,
        result.parity,
        {},
        "# card\n",
    )
