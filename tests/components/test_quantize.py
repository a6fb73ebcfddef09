from pathlib import Path

import onnx
import pytest
import torch

from components.config import ExportConfig
from components.data import Dataset
from components.models import build_model
from components.onnx_export import export_onnx
from components.quantize import int8_decision, onnx_accuracy, quantize_int8


def test_int8_model_is_qdq_and_close_in_accuracy(tmp_path: Path, mnist_dataset: Dataset) -> None:
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 1, 10).eval()
    fp32 = export_onnx(model, mnist_dataset, tmp_path / "m.onnx", ExportConfig(), {})
    int8 = quantize_int8(Path(fp32.path), tmp_path / "m.int8.onnx", mnist_dataset, 64, seed=0)
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # an untrained model's predictions are fragile; still, int8 must stay near float32
    assert abs(onnx_accuracy(int8, mnist_dataset) - fp32.onnx_test_accuracy) < 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.onnx"]


@pytest.mark.parametrize(
    ("int8_accuracy", "int8_p50", "keep", "why"),
    [
        (0.975, 0.8, True, "kept"),  # 0.5 point drop, faster
        (0.965, 0.8, False, "accuracy falls 1.50 points"),  # too inaccurate
        (0.980, 1.0, False, "not faster"),  # as fast is not faster
        (0.990, 1.3, False, "not faster"),
    ],
)
def test_int8_decision_follows_the_measured_figures(
    int8_accuracy: float, int8_p50: float, keep: bool, why: str
) -> None:
    decision = int8_decision(0.98, int8_accuracy, 1.0, int8_p50, max_accuracy_drop=0.01)
    assert decision.keep is keep and why in decision.reason


def test_an_unmeasured_latency_never_keeps_int8() -> None:
    # a missing p50 used to become inf, inf / inf is nan, and nan compared as "faster"
    for fp32, int8 in ((None, 0.5), (1.0, None), (None, None), (0.0, 0.5)):
        decision = int8_decision(0.98, 0.98, fp32, int8, max_accuracy_drop=0.01)
        assert decision.keep is False and "not measured" in decision.reason
