from pathlib import Path

import numpy as np
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


def _rounds(p50: float) -> np.ndarray:
    return p50 * (1 + 0.01 * np.sin(np.arange(10)))  # ten interleaved rounds, a little noise


@pytest.mark.parametrize(
    ("extra_int8_errors", "int8_p50", "keep", "why"),
    [
        (2, 0.8, True, "kept: 1.25x faster"),  # 0.2 point lower on 1,000, clearly faster
        (25, 0.8, False, "reaches below -1.00"),  # 2.5 points lower: too inaccurate
        (0, 1.0, False, "not faster by 5%"),  # as fast is not faster
        (0, 0.97, False, "not faster by 5%"),  # 3% faster: inside the margin
        (0, 1.3, False, "not faster"),
    ],
)
def test_int8_decision_follows_the_measured_figures(
    extra_int8_errors: int, int8_p50: float, keep: bool, why: str
) -> None:
    fp32 = np.arange(1000) >= 20  # 98% right on validation
    int8 = fp32.copy()
    int8[np.flatnonzero(fp32)[:extra_int8_errors]] = False
    decision = int8_decision(fp32, int8, _rounds(1.0), _rounds(int8_p50), 0.01, 0.05)
    assert decision.keep is keep and why in decision.reason, decision.reason


def test_an_unmeasured_latency_never_keeps_int8() -> None:
    # a missing p50 used to become inf, inf / inf is nan, and nan compared as "faster"
    same = np.ones(500, bool)  # enough examples to show a 1-point margin
    for fp32, int8 in ((None, _rounds(0.5)), (_rounds(1.0), None), (None, None)):
        decision = int8_decision(same, same, fp32, int8, 0.01, 0.05)
        assert decision.keep is False and "not measured" in decision.reason
