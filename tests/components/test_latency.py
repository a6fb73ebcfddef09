import json
from pathlib import Path

import pytest
import torch

from components.config import BenchmarkConfig, ExportConfig
from components.data import Dataset
from components.latency import (
    benchmark_onnx,
    benchmark_torch,
    cores,
    cpu_info,
    flops_per_image,
    latency_chart,
    matmul_peak_flops,
    measure_inference,
    report_markdown,
    time_calls,
)
from components.models import build_model
from components.onnx_export import export_onnx


def test_time_calls_excludes_warmup() -> None:
    calls: list[int] = []
    times = time_calls(lambda: calls.append(1), warmup=3, iterations=7)
    assert len(calls) == 10 and len(times) == 7 and (times >= 0).all()


def test_flops_follow_the_documented_convention() -> None:
    # one 3x3 conv, 1 -> 2 channels, on 4x4 with padding 1: 2 FLOPs x 9 x 2 x 16 = 576
    conv = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
    assert flops_per_image(conv, (1, 4, 4)) == 576


def test_matmul_peak_and_cpu_info_are_measured() -> None:
    assert matmul_peak_flops(1, size=256, repeats=2) > 1e8
    info = cpu_info()
    assert info["cores"] == cores() >= 1 and "avx2" in info["isa"]


def test_measurement_covers_runtimes_batches_and_threads(
    tmp_path: Path, mnist_dataset: Dataset
) -> None:
    model = build_model("cnn_tiny", 1, 10).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, mnist_dataset, path, ExportConfig(), {})
    config = BenchmarkConfig(batch_sizes=(1, 4), threads=(1, 0), warmup=1, iterations=5)
    other = build_model("cnn_small", 1, 10)
    rows, report = measure_inference(
        ("s", model),
        [("s-onnx", path)],
        [("t", other, (1, 28, 28)), ("t-onnx", path, (1, 28, 28))],  # a module, an ONNX file
        (1, 28, 28),
        config,
    )
    keys = {(r.variant, r.runtime, r.threads, r.batch_size) for r in rows}
    for threads in (1, cores()):
        for batch in (1, 4):
            assert ("s", "pytorch", threads, batch) in keys and (
                "s-onnx",
                "onnxruntime",
                threads,
                batch,
            ) in keys
    assert {(r.threads, r.batch_size) for r in rows if r.variant == "t"} == {
        (cores(), 1),
        (cores(), 4),
    }
    assert {r.runtime for r in rows if r.variant == "t-onnx"} == {"onnxruntime"}
    for r in rows:
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
        assert r.throughput_per_s == pytest.approx(r.batch_size / r.mean_ms * 1e3)
    assert report["speedup_ort_fp32_vs_torch_b1"] > 0 and 0 < report["fraction_of_matmul_peak"] < 1
    assert report["flops_per_image"] == flops_per_image(model, (1, 28, 28))
    json.dumps(report)  # serialisable as is
    markdown = report_markdown(rows, report)
    assert "images/s" in markdown and "matmul peak" in markdown
    chart = latency_chart(rows, tmp_path / "latency.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_runtime_helpers_respect_thread_choice(
    tmp_path: Path, mnist_dataset: Dataset
) -> None:
    model = build_model("cnn_tiny", 1, 10).eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, mnist_dataset, path, ExportConfig(), {})
    config = BenchmarkConfig(batch_sizes=(2,), threads=(1,), warmup=1, iterations=5)
    before = torch.get_num_threads()
    assert [r.threads for r in benchmark_torch("s", model, (1, 28, 28), config)] == [1]
    assert torch.get_num_threads() == before  # restored
    assert [r.threads for r in benchmark_onnx("s", path, (1, 28, 28), config)] == [1]
