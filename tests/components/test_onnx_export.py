from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from components.config import ExportConfig
from components.data import Dataset, normalize
from components.inference import predict_logits
from components.models import build_model
from components.onnx_export import (
    ParityError,
    check_structure,
    export_onnx,
    onnx_session,
    parity_report,
    run_onnx,
)


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
        export_onnx(student, mnist_dataset, path, ExportConfig(max_abs_diff=1e-12, rtol=0), {})
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_parity_report_names_the_wrong_inputs_and_how_far() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((200, 10)).astype(np.float32)
    labels = reference.argmax(1)
    assert parity_report(reference + 1e-6, reference, labels, ExportConfig())["passed"]
    # a "deliberately wrong model": two inputs off by 0.01, one with a flipped top-1
    wrong = reference.copy()
    wrong[[7, 42]] += 0.01
    wrong[99, labels[99]] -= 100.0
    report = parity_report(wrong, reference, labels, ExportConfig())
    assert not report["passed"]
    assert report["failing_inputs"] == [7, 42, 99] and report["worst_input"] == 99
    assert report["max_abs_diff"] == pytest.approx(100.0, rel=1e-4)
    assert report["top1_agreement"] == pytest.approx(199 / 200)
    assert any("top-1 agreement" in p for p in report["problems"])
    assert any("accuracy" in p for p in report["problems"])


def test_a_fixed_batch_dimension_fails_the_structural_gate(tmp_path: Path, student) -> None:
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(student, (torch.randn(2, 1, 28, 28),), str(path), dynamo=False)
    with pytest.raises(ValueError, match="batch dimension is fixed"):
        check_structure(path, (1, 3), np.zeros((1, 1, 28, 28), np.float32))
