"""Static INT8 quantization of the exported model with ONNX Runtime, and whether to keep it.

Pre-processing (``quant_pre_process``: graph optimisation and shape inference), then static
quantization in QDQ format with per-channel weights (signed int8) and unsigned int8
activations, calibrated with MinMax on training images. The INT8 model is kept for the
handoff only if its test accuracy drops by at most the configured amount and it is measured
faster than the float32 model on this machine; both outcomes are reported with the reason.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from components.data import Dataset, normalize
from components.io import atomic_path
from components.onnx_export import INPUT_NAME, onnx_session, run_onnx


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(
    fp32_path: Path, out_path: Path, dataset: Dataset, calibration_images: int, seed: int
) -> Path:
    """Write the INT8 QDQ model for ``fp32_path`` to ``out_path`` (atomically)."""
    train = dataset.splits["train"]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(train, size=min(calibration_images, len(train)), replace=False))
    inputs = normalize(np.asarray(dataset.images[chosen]), dataset.info).contiguous().numpy()
    batches = [inputs[s : s + 32] for s in range(0, len(inputs), 32)]
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        with atomic_path(out_path) as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                _Calibration(batches),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    return out_path


def onnx_accuracy(path: Path, dataset: Dataset, split: str = "test") -> float:
    images, labels = dataset.split(split)
    inputs = normalize(np.asarray(images), dataset.info).contiguous().numpy()
    return float((run_onnx(onnx_session(path), inputs).argmax(1) == labels).mean())


@dataclass(frozen=True)
class Int8Decision:
    keep: bool
    reason: str
    accuracy_drop: float
    latency_ratio: float  # int8 p50 / float32 p50 at batch 1


def int8_decision(
    fp32_accuracy: float,
    int8_accuracy: float,
    fp32_p50_ms: float | None,
    int8_p50_ms: float | None,
    max_accuracy_drop: float,
) -> Int8Decision:
    """Keep INT8 only within ``max_accuracy_drop`` and when measured faster than float32; a
    latency that was not measured never counts as faster."""
    drop = fp32_accuracy - int8_accuracy
    if drop > max_accuracy_drop:
        reason = (
            f"dropped: accuracy falls {drop * 100:.2f} points (limit {max_accuracy_drop * 100:.2f})"
        )
        return Int8Decision(False, reason, drop, float("nan"))
    if not fp32_p50_ms or not int8_p50_ms:
        return Int8Decision(False, "dropped: latency not measured", drop, float("nan"))
    ratio = int8_p50_ms / fp32_p50_ms
    if ratio >= 1:
        reason = (
            f"dropped: not faster on this CPU (p50 at batch 1 {int8_p50_ms:.3f} ms vs "
            f"{fp32_p50_ms:.3f} ms float32)"
        )
        return Int8Decision(False, reason, drop, ratio)
    reason = f"kept: {1 / ratio:.2f}x faster at batch 1, accuracy change {-drop * 100:+.2f} points"
    return Int8Decision(True, reason, drop, ratio)
