"""Static INT8 quantization of the exported model with ONNX Runtime, and whether to keep it.

Pre-processing (``quant_pre_process``: graph optimisation and shape inference), then static
quantization in QDQ format with per-channel weights (signed int8) and unsigned int8
activations, calibrated with MinMax on training images. The INT8 model is kept for the
handoff only if, on validation, its accuracy is not worse than float32's by more than the
configured margin and it is measured faster by the configured margin, both judged on their
intervals; both outcomes are reported with the reason.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from components.config import ExportConfig, PromotionConfig
from components.data import Dataset, normalize
from components.io import atomic_path
from components.onnx_export import INPUT_NAME, OUTPUT_NAME, onnx_session, run_onnx
from components.promotion import interleaved_rounds
from components.stats import Estimate, paired_difference, ratio_of_medians


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


def onnx_correct(path: Path, dataset: Dataset, split: str) -> np.ndarray:
    """Per example of the split: whether the ONNX model classifies it right."""
    images, labels = dataset.split(split)
    inputs = normalize(np.asarray(images), dataset.info).contiguous().numpy()
    return np.asarray(run_onnx(onnx_session(path), inputs).argmax(1) == labels)


def onnx_accuracy(path: Path, dataset: Dataset, split: str = "test") -> float:
    return float(onnx_correct(path, dataset, split).mean())


@dataclass(frozen=True)
class Int8Decision:
    keep: bool
    reason: str
    accuracy: Estimate | None  # INT8 - float32 on validation, paired
    latency: Estimate | None  # INT8 p50 / float32 p50 at batch 1, interleaved rounds

    def as_dict(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "reason": self.reason,
            "accuracy_difference": self.accuracy.as_dict() if self.accuracy else None,
            "latency_ratio": self.latency.as_dict() if self.latency else None,
        }


def int8_decision(
    fp32_correct: np.ndarray,
    int8_correct: np.ndarray,
    fp32_rounds_ms: np.ndarray | None,
    int8_rounds_ms: np.ndarray | None,
    max_accuracy_drop: float,
    latency_margin: float,
    confidence: float = 0.95,
    resamples: int = 2000,
) -> Int8Decision:
    """Keep INT8 only when, on the same validation examples, it is not worse than float32 by
    more than ``max_accuracy_drop`` (the lower end of the paired interval), and its latency
    interval lies below float32's by ``latency_margin`` (the upper end of the ratio's
    interval under ``1 - latency_margin``). A latency not measured never counts as faster."""
    accuracy = paired_difference(int8_correct, fp32_correct, confidence)
    lo, hi = accuracy.interval
    if lo < -max_accuracy_drop - 1e-12:
        reason = (
            f"dropped: accuracy {accuracy.estimate * 100:+.2f} points on validation, interval "
            f"[{lo * 100:+.2f}, {hi * 100:+.2f}] reaches below -{max_accuracy_drop * 100:.2f}"
        )
        return Int8Decision(False, reason, accuracy, None)
    if fp32_rounds_ms is None or int8_rounds_ms is None or not len(fp32_rounds_ms):
        return Int8Decision(False, "dropped: latency not measured", accuracy, None)
    latency = ratio_of_medians(int8_rounds_ms, fp32_rounds_ms, confidence, resamples)
    if latency.interval[1] >= 1 - latency_margin:
        reason = (
            f"dropped: not faster by {latency_margin:.0%} on this CPU (p50 at batch 1 "
            f"{latency.estimate:.2f}x float32's, interval [{latency.interval[0]:.2f}, "
            f"{latency.interval[1]:.2f}])"
        )
        return Int8Decision(False, reason, accuracy, latency)
    reason = (
        f"kept: {1 / latency.estimate:.2f}x faster at batch 1 (ratio interval "
        f"[{latency.interval[0]:.2f}, {latency.interval[1]:.2f}]), accuracy "
        f"{accuracy.estimate * 100:+.2f} points on validation"
    )
    return Int8Decision(True, reason, accuracy, latency)


def measure_int8(
    fp32: Path, int8: Path, dataset: Dataset, export: ExportConfig, timing: PromotionConfig
) -> Int8Decision:
    """Whether the INT8 twin earns its place, by figures measured now: both models on the
    validation split, and their latency at batch 1 timed as promotion times them (the same
    threads, interleaved rounds)."""
    images, _ = dataset.split("val")
    one = normalize(np.asarray(images[:1]), dataset.info).contiguous().numpy()
    calls = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = onnx_session(path, threads=timing.threads)
        calls[name] = functools.partial(session.run, [OUTPUT_NAME], {INPUT_NAME: one})
    rounds = interleaved_rounds(calls, timing.warmup, timing.iterations, timing.rounds)
    return int8_decision(
        onnx_correct(fp32, dataset, "val"),
        onnx_correct(int8, dataset, "val"),
        rounds["fp32"],
        rounds["int8"],
        export.int8_max_accuracy_drop,
        export.int8_latency_margin,
        timing.confidence,
        timing.resamples,
    )
