from pathlib import Path

import pytest
import torch

from components.benchmark import (
    benchmark_onnx,
    benchmark_torch,
    environment,
    report_json,
    report_markdown,
    time_calls,
)
from components.config import BenchmarkConfig, ExportConfig
from components.data import Dataset
from components.models import build_model
from components.onnx_export import export_onnx


def test_time_calls_excludes_warmup() -> None:
    calls: list[int] = []
    times = time_calls(lambda: calls.append(1), warmup=3, iterations=7)
    assert len(calls) == 10 and len(times) == 7 and (times >= 0).all()


def test_benchmark_rows_for_both_runtimes(tmp_path: Path, mnist_dataset: Dataset) -> None:
    model = build_model("cnn_tiny", 1, 10).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, mnist_dataset, path, ExportConfig(), {})
    config = BenchmarkConfig(batch_sizes=(1, 4), warmup=1, iterations=5)
    rows = benchmark_torch("s", model, (1, 28, 28), config) + benchmark_onnx(
        "s-onnx", path, (1, 28, 28), config
    )
    assert [(r.runtime, r.batch_size) for r in rows] == [
        ("pytorch", 1),
        ("pytorch", 4),
        ("onnxruntime", 1),
        ("onnxruntime", 4),
    ]
    for r in rows:
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.throughput_per_s == pytest.approx(r.batch_size / r.mean_ms * 1e3)
    env = environment()
    assert env["torch"] == torch.__version__
    markdown = report_markdown(rows, env)
    assert markdown.count("\n| s") == 4 and "p99 ms" in markdown
    assert len(report_json(rows, env, config)["results"]) == 4
