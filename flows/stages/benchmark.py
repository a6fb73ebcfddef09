"""``benchmark``: PyTorch eager against ONNX Runtime (float32 and INT8) on this machine.

Latency depends on the models, the settings and the machine, so the machine is part of the
fingerprint: the same models on another machine are measured again.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from components.checkpoint import load_checkpoint
from components.config import PipelineConfig
from components.io import atomic_path, write_json, write_text
from components.latency import cpu_info, latency_chart, measure_inference, report_markdown
from components.onnx_export import export_graph
from components.teachers import TWIN_OPSET, load_teacher
from flows.refs import INT8_VARIANT, ONNX_VARIANT, BenchmarkRef, DataRef, ModelRef, OnnxRef
from flows.stage import Outcome, Record, Stage, StageContext


class Benchmark(Stage[BenchmarkRef]):
    name = "benchmark"
    version = 2  # 2: the teacher timed in ONNX Runtime too (like-for-like speed-ups)
    output = BenchmarkRef
    reads = ("benchmark",)
    needs = ("prepare-data", "teacher", "student-baseline", "student-kd", "onnx-export")

    def environment(self, config: PipelineConfig) -> dict[str, Any]:
        cpu = cpu_info()
        return {
            "machine": [platform.node(), cpu["model"], cpu["cores"]],
            "versions": [torch.__version__, onnxruntime.__version__],
        }

    def run(self, ctx: StageContext) -> Outcome[BenchmarkRef]:
        config = ctx.config.benchmark
        info = ctx.input("prepare-data", DataRef).info(ctx.work_dir)
        exported = ctx.input("onnx-export", OnnxRef)

        shape = (info.in_channels, *info.image_size)

        def other(stage: str) -> tuple[str, torch.nn.Module | Path, tuple[int, int, int]]:
            """A model to time beside the student: an ONNX teacher runs in ONNX Runtime."""
            ref = ctx.input(stage, ModelRef)
            path = ctx.work_dir / ref.checkpoint
            model = path if ref.format == "onnx" else load_teacher(path, ref.format)
            return stage, model, ref.input_shape(info)

        others = [other("teacher"), other("student-baseline")]
        teacher = others[0]
        if not isinstance(teacher[1], Path):
            # The teacher in ONNX Runtime too, so every speed-up against it compares one
            # runtime with itself (an ONNX teacher has no PyTorch twin: its PyTorch rows none).
            twin = _onnx_twin(teacher[1], teacher[2], ctx.directory / "teacher.onnx")
            if twin is None:
                ctx.log.warning("the teacher cannot be exported to ONNX: timed in PyTorch only")
            else:
                others.append(("teacher", twin, teacher[2]))

        student = ctx.input("student-kd", ModelRef)
        student_model = load_checkpoint(
            ctx.work_dir / student.checkpoint, "cpu", expected_sha256=student.sha256
        )[0]
        onnx_models = [(ONNX_VARIANT, ctx.work_dir / exported.export.path)]
        if exported.int8_model is not None:
            onnx_models.append((INT8_VARIANT, ctx.work_dir / exported.int8_model))
        rows, report = measure_inference(
            ("student-kd", student_model),
            onnx_models,
            others,
            shape,
            config,
        )
        json_path = write_json(ctx.directory / "benchmark.json", report)
        md_path = write_text(ctx.directory / "benchmark.md", report_markdown(rows, report))
        png_path = latency_chart(rows, ctx.directory / "latency.png")
        metrics: dict[str, float] = {}
        for r in rows:
            prefix = f"{r.variant}.{r.runtime}.threads{r.threads}.batch{r.batch_size}"
            metrics |= {
                f"{prefix}.p50_ms": r.p50_ms,
                f"{prefix}.p90_ms": r.p90_ms,
                f"{prefix}.p99_ms": r.p99_ms,
                f"{prefix}.mean_ms": r.mean_ms,
                f"{prefix}.images_per_s": r.throughput_per_s,
            }
        headline = ("speedup_ort_fp32_vs_torch_b1", "fraction_of_matmul_peak", "flops_per_image")
        metrics |= {k: report[k] for k in headline if report[k] is not None}
        cpu = report["environment"]["cpu"]
        ctx.log.info(
            "ONNX Runtime float32 is %.2fx faster than PyTorch eager at batch %d",
            report["speedup_ort_fp32_vs_torch_b1"] or 0.0,
            min(config.batch_sizes),
        )
        record = Record(
            metrics=metrics,
            tags={
                "cpu": cpu["model"],
                "cores": cpu["cores"],
                "isa": ",".join(f for f, on in cpu["isa"].items() if on),
                "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__,
            },
            files=[(json_path, None), (md_path, None), (png_path, None)],
        )
        ref = BenchmarkRef(
            json_path=ctx.relative(json_path),
            markdown_path=ctx.relative(md_path),
            results=[asdict(r) for r in rows],
        )
        return Outcome(ref, record)


def _onnx_twin(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path | None:
    """The model as an ONNX graph at ``path`` for timing (the tracing exporter, else
    dynamo's), whole or not at all; None when neither can export it."""
    example = torch.zeros(1, *shape)
    for dynamo in (False, True):
        try:
            with atomic_path(path) as tmp:
                export_graph(model.eval().cpu(), example, tmp, TWIN_OPSET, dynamo=dynamo)
            return path
        except Exception:
            continue
    return None
