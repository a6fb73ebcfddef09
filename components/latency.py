"""Latency and throughput of PyTorch eager and ONNX Runtime on this CPU, warm-up excluded,
with the context that makes the figures readable: FLOPs per image, a measured matrix-multiply
peak on the same threads, CPU model and ISA flags, package versions.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from components.config import BenchmarkConfig
from components.devices import torch_threads
from components.onnx_export import onnx_session

ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


@dataclass(frozen=True)
class Latency:
    variant: str  # e.g. "student-kd"
    runtime: str  # "pytorch" or "onnxruntime"
    batch_size: int
    threads: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float  # images per second at the mean latency


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_threads(threads: int) -> int:
    return threads or cores()


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


def _summarise(
    variant: str, runtime: str, batch: int, threads: int, times_ms: np.ndarray
) -> Latency:
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    mean = float(times_ms.mean())
    return Latency(
        variant,
        runtime,
        batch,
        threads,
        float(p50),
        float(p90),
        float(p99),
        mean,
        batch / mean * 1e3,
    )


def benchmark_torch(
    variant: str,
    model: nn.Module,
    input_shape: tuple[int, int, int],
    config: BenchmarkConfig,
    threads: tuple[int, ...] | None = None,
) -> list[Latency]:
    # Channels-last, as the pipeline runs its models: PyTorch's fastest CPU layout here.
    model = model.cpu().to(memory_format=torch.channels_last).eval()
    rows = []
    for n in threads if threads is not None else config.threads:
        with torch_threads(resolve_threads(n)):
            for batch in config.batch_sizes:
                inputs = torch.randn(batch, *input_shape).contiguous(
                    memory_format=torch.channels_last
                )

                def run(inputs: torch.Tensor = inputs) -> object:
                    with torch.inference_mode():
                        return model(inputs)

                times = time_calls(run, config.warmup, config.iterations)
                rows.append(_summarise(variant, "pytorch", batch, resolve_threads(n), times))
    return rows


def benchmark_onnx(
    variant: str,
    path: Path,
    input_shape: tuple[int, int, int],
    config: BenchmarkConfig,
    threads: tuple[int, ...] | None = None,
) -> list[Latency]:
    """``path``'s latency in ONNX Runtime. Any model exporters write: its own input name and
    type (float16 too); one exported with a fixed batch size is timed at that size only."""
    rows = []
    for n in threads if threads is not None else config.threads:
        session = onnx_session(path, threads=resolve_threads(n))
        first = session.get_inputs()[0]
        dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        fixed = first.shape[0] if isinstance(first.shape[0], int) and first.shape[0] > 0 else None
        for batch in config.batch_sizes if fixed is None else (fixed,):
            rng = np.random.default_rng(0)
            feed = {first.name: rng.standard_normal((batch, *input_shape)).astype(dtype)}

            def run(feed: dict[str, np.ndarray] = feed, session: Any = session) -> object:
                return session.run(None, feed)

            times = time_calls(run, config.warmup, config.iterations)
            rows.append(_summarise(variant, "onnxruntime", batch, resolve_threads(n), times))
    return rows


def flops_per_image(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Floating-point operations of one forward pass, by torch's FlopCounterMode (which
    counts a multiply-add as 2 FLOPs, for convolutions and matrix products only)."""
    # Imported here: it imports triton, a third of a second every `kd` process would pay.
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.cpu().eval()(torch.randn(1, *input_shape))
    return int(counter.get_total_flops())


@functools.cache
def matmul_peak_flops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Best float32 FLOP/s of a large square matrix product on ``threads`` threads, the
    better of PyTorch's (MKL/oneDNN) and ONNX Runtime's (MLAS) own kernels. Measured once
    per process (a second of work that a sweep or a schedule would repeat for the same
    machine)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    with torch_threads(threads):
        torch.mm(a, b)
        torch_best = min(time_calls(lambda: torch.mm(a, b), 1, repeats)) / 1e3
    session = _ort_matmul_session(threads)
    feed = {"a": a.numpy(), "b": b.numpy()}
    ort_best = min(time_calls(lambda: session.run(["c"], feed), 1, repeats)) / 1e3
    return 2 * size**3 / min(torch_best, ort_best)


def _ort_matmul_session(threads: int) -> ort.InferenceSession:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", "k"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["k", "m"]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", "m"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    return {"model": model, "cores": cores(), "isa": {f: f in flags for f in ISA_FLAGS}}


PACKAGES = (
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "numpy",
    "mlflow",
    "prefect",
)


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu": cpu_info(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "packages": versions,
    }


def p50_of(
    results: list[dict[str, Any]],
    variant: str,
    batch: int,
    threads: int | None = None,
    runtime: str | None = None,
) -> float | None:
    """p50 of ``variant`` at ``batch`` from report rows; ``threads=None``: the most measured;
    ``runtime``: of that runtime only (a teacher is timed in PyTorch and ONNX Runtime)."""
    if threads is None:
        threads = max(r["threads"] for r in results)
    for r in results:
        if (r["variant"], r["batch_size"], r["threads"]) == (variant, batch, threads) and (
            runtime is None or r["runtime"] == runtime
        ):
            return r["p50_ms"]
    return None


def report_json(
    rows: list[Latency],
    env: dict[str, Any],
    config: BenchmarkConfig,
    *,
    torch_variant: str,
    onnx_variant: str,
    flops: int,
    peak_flops: float,
) -> dict[str, Any]:
    """The full report; the headline ratios sit at the top level."""
    # The headline is on the most threads measured (all cores, by default).
    most = max(r.threads for r in rows)
    small, large = min(config.batch_sizes), max(config.batch_sizes)
    results = [asdict(r) for r in rows]
    torch_b1 = p50_of(results, torch_variant, small, most)
    ort_b1 = p50_of(results, onnx_variant, small, most)
    ort_large = p50_of(results, onnx_variant, large, most)
    achieved = flops * large / (ort_large / 1e3) if ort_large else 0.0
    return {
        "speedup_ort_fp32_vs_torch_b1": torch_b1 / ort_b1 if torch_b1 and ort_b1 else None,
        "fraction_of_matmul_peak": achieved / peak_flops if peak_flops else None,
        "flops_per_image": flops,
        "flops_convention": "torch FlopCounterMode: 2 FLOPs per multiply-add, conv and matmul only",
        "matmul_peak_flops_per_s": peak_flops,
        "achieved_flops_per_s_ort_fp32_largest_batch": achieved,
        "threads_for_headline": most,
        "environment": env,
        "settings": config.model_dump(mode="json"),
        "results": results,
    }


def report_markdown(rows: list[Latency], report: dict[str, Any]) -> str:
    lines = [
        "| variant | runtime | threads | batch | p50 ms | p90 ms | p99 ms | mean ms | images/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.runtime} | {r.threads} | {r.batch_size} | {r.p50_ms:.3f} "
            f"| {r.p90_ms:.3f} | {r.p99_ms:.3f} | {r.mean_ms:.3f} | {r.throughput_per_s:,.0f} |"
        )
    cpu = report["environment"]["cpu"]
    isa = ", ".join(f for f, on in cpu["isa"].items() if on) or "none of " + ", ".join(ISA_FLAGS)
    speedup = report["speedup_ort_fp32_vs_torch_b1"]
    fraction = report["fraction_of_matmul_peak"]
    achieved = report["achieved_flops_per_s_ort_fp32_largest_batch"]
    return "\n".join(
        [
            "# Inference benchmark",
            "",
            *lines,
            "",
            f"- ONNX Runtime float32 vs PyTorch eager, p50 at the smallest batch, "
            f"{report['threads_for_headline']} threads: "
            + (f"{speedup:.2f}x faster" if speedup else "n/a"),
            f"- FLOPs per image: {report['flops_per_image']:,} ({report['flops_convention']})",
            f"- float32 matmul peak on {report['threads_for_headline']} threads: "
            f"{report['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s; ONNX Runtime float32 at the "
            f"largest batch reaches {achieved / 1e9:.2f} GFLOP/s = "
            + (f"{fraction:.1%} of it" if fraction is not None else "n/a"),
            f"- CPU: {cpu['model']}, {cpu['cores']} cores; ISA: {isa}",
            f"- Versions: torch {report['environment']['torch']}, onnxruntime "
            f"{report['environment']['onnxruntime']}, onnx {report['environment']['onnx']}",
            "",
        ]
    )


def latency_chart(rows: list[Latency], path: Path) -> Path:
    """PNG: p50 latency by batch size, one line per variant/runtime/thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[Latency]] = {}
    for r in rows:
        series.setdefault(f"{r.variant} ({r.runtime}, {r.threads} thr)", []).append(r)
    for label, points in series.items():
        points.sort(key=lambda r: r.batch_size)
        axis.plot(
            [p.batch_size for p in points], [p.p50_ms for p in points], marker="o", label=label
        )
    axis.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency (ms)")
    axis.set_title("Inference latency by batch size")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def measure_inference(
    student: tuple[str, nn.Module],
    onnx_models: list[tuple[str, Path]],
    others: list[tuple[str, nn.Module | Path, tuple[int, int, int]]],
    input_shape: tuple[int, int, int],
    config: BenchmarkConfig,
) -> tuple[list[Latency], dict[str, Any]]:
    """The student in PyTorch and each ONNX model at every batch size and thread count; the
    other models (teacher, baseline: a module, or an ONNX file, each with its own input
    shape) on all cores only, for comparison. The first ONNX model is the float32 export the
    headline ratios are about."""
    name, model = student
    rows = benchmark_torch(name, model, input_shape, config)
    for variant, path in onnx_models:
        rows += benchmark_onnx(variant, path, input_shape, config)
    for variant, other, shape in others:
        if isinstance(other, Path):
            rows += benchmark_onnx(variant, other, shape, config, threads=(0,))
        else:
            rows += benchmark_torch(variant, other, shape, config, threads=(0,))
    report = report_json(
        rows,
        environment(),
        config,
        torch_variant=name,
        onnx_variant=onnx_models[0][0],
        flops=flops_per_image(model, input_shape),
        peak_flops=matmul_peak_flops(max(r.threads for r in rows)),
    )
    return rows, report
