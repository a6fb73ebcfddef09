from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from components.config import ExportConfig
from components.data import Dataset, normalize
from components.models import build_model
from components.onnx_export import ParityError, export_onnx, onnx_session, run_onnx
from components.training import predict_logits


@pytest.fixture
def student() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 1, 10)
    # non-trivial batch-norm statistics, so eval-mode export is actually exercised
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 1, 28, 28) * 2 + 0.5)
    return model.eval()


def test_export_passes_gates_and_carries_metadata(
    tmp_path: Path, mnist_dataset: Dataset, student: torch.nn.Module
) -> None:
    path = tmp_path / "out" / "model.onnx"
    result = export_onnx(student, mnist_dataset, path, ExportConfig(), {"class_labels": "[0..9]"})
    assert result.attempts["dynamo"] == "ok" and result.exporter == "dynamo"
    assert result.max_abs_diff <= 1e-4 and result.top1_agreement >= 0.999
    assert result.onnx_test_accuracy == result.torch_test_accuracy
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["class_labels"] == "[0..9]" and meta["exporter"] == "dynamo"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert not list(path.parent.glob(".*"))  # no temporary files left
    # the batch dimension really is dynamic
    session = onnx_session(path)
    images, _ = mnist_dataset.split("test")
    for batch in (1, 3, 64):
        inputs = normalize(images[:batch], mnist_dataset.info)
        out = run_onnx(session, inputs.numpy())
        expected = predict_logits(student, images[:batch], mnist_dataset, torch.device("cpu"))
        assert out.shape == (batch, 10)
        assert np.abs(out - expected.numpy()).max() < 1e-4


def test_parity_failure_is_refused_and_nothing_is_written(
    tmp_path: Path, mnist_dataset: Dataset, student: torch.nn.Module
) -> None:
    path = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match="parity"):
        export_onnx(student, mnist_dataset, path, ExportConfig(max_abs_diff=1e-12), {})
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
