"""Latency and throughput of PyTorch eager and ONNX Runtime, warm-up excluded."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from components.config import BenchmarkConfig
from components.onnx_export import INPUT_NAME, OUTPUT_NAME, onnx_session


@dataclass(frozen=True)
class Latency:
    variant: str  # e.g. "student-kd"
    runtime: str  # "pytorch" or "onnxruntime"
    batch_size: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float  # samples per second at the mean latency


def time_calls(run: Callable[[], object], warmup: int, iterations: int) -> np.ndarray:
    """Milliseconds per call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        run()
        times[i] = (time.perf_counter() - start) * 1e3
    return times


def _summarise(variant: str, runtime: str, batch: int, times_ms: np.ndarray) -> Latency:
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    mean = float(times_ms.mean())
    return Latency(
        variant, runtime, batch, float(p50), float(p90), float(p99), mean, batch / mean * 1e3
    )


def benchmark_torch(
    variant: str, model: nn.Module, input_shape: tuple[int, int, int], config: BenchmarkConfig
) -> list[Latency]:
    # Channels-last, as the pipeline runs its models: PyTorch's fastest CPU layout here.
    model = model.cpu().to(memory_format=torch.channels_last).eval()
    rows = []
    for batch in config.batch_sizes:
        inputs = torch.randn(batch, *input_shape).contiguous(memory_format=torch.channels_last)

        def run(inputs: torch.Tensor = inputs) -> object:
            with torch.inference_mode():
                return model(inputs)

        times = time_calls(run, config.warmup, config.iterations)
        rows.append(_summarise(variant, "pytorch", batch, times))
    return rows


def benchmark_onnx(
    variant: str, path: Path, input_shape: tuple[int, int, int], config: BenchmarkConfig
) -> list[Latency]:
    session = onnx_session(path)
    rows = []
    for batch in config.batch_sizes:
        feed = {
            INPUT_NAME: np.random.default_rng(0).standard_normal((batch, *input_shape), np.float32)
        }
        times = time_calls(
            lambda feed=feed: session.run([OUTPUT_NAME], feed), config.warmup, config.iterations
        )
        rows.append(_summarise(variant, "onnxruntime", batch, times))
    return rows


def environment() -> dict[str, str]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }


def report_markdown(rows: list[Latency], env: dict[str, str]) -> str:
    lines = [
        "| variant | runtime | batch | p50 ms | p90 ms | p99 ms | throughput /s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.runtime} | {r.batch_size} | {r.p50_ms:.3f} | {r.p90_ms:.3f} "
            f"| {r.p99_ms:.3f} | {r.throughput_per_s:,.0f} |"
        )
    setting = ", ".join(f"{k}={v}" for k, v in env.items())
    return "# Inference benchmark\n\n" + "\n".join(lines) + f"\n\nEnvironment: {setting}\n"


def report_json(rows: list[Latency], env: dict[str, str], config: BenchmarkConfig) -> dict:
    return {
        "environment": env,
        "settings": config.model_dump(mode="json"),
        "results": [asdict(r) for r in rows],
    }
