"""The pipeline's inference benchmark, run on the latest default-run student outside the flow.

    python benchmarks/onnx_runtime.py --out DIR [--work-dir kd-work] [--iterations 200]

Finds the newest handoff bundle under the work directory, its float32 and INT8 ONNX models
and the PyTorch checkpoint they were exported from, and measures PyTorch eager, ONNX Runtime
float32 and INT8 at batch sizes 1, 8, 32, 64 on 1 thread and on all cores. Writes
DIR/onnx_runtime.json (top level: ``speedup_ort_fp32_vs_torch_b1``,
``fraction_of_matmul_peak``), DIR/onnx_runtime.md and DIR/latency.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from components.checkpoint import load_checkpoint
from components.config import BenchmarkConfig
from components.io import sha256_file, write_json, write_text
from components.latency import latency_chart, measure_inference, report_markdown
from flows.refs import INT8_VARIANT, ONNX_VARIANT


def latest_student(work_dir: Path) -> tuple[Path, Path, Path | None]:
    """(checkpoint, float32 ONNX, INT8 ONNX or None) of the newest handoff in ``work_dir``."""
    # Each stage writes under work_dir/<its name>/.
    handoffs = work_dir / "handoff"
    bundles = sorted(handoffs.glob("*/model.onnx"), key=lambda p: p.stat().st_mtime)
    if not bundles:
        raise SystemExit(f"no handoff bundle under {handoffs}: run `kd run` first")
    fp32 = bundles[-1]
    meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    wanted = meta.get("student_checkpoint_sha256")
    checkpoints = [
        p for p in (work_dir / "student-kd").glob("*/model.pt") if sha256_file(p) == wanted
    ]
    if not checkpoints:
        raise SystemExit(
            f"{fp32}: the student checkpoint it was exported from is not in {work_dir}"
        )
    # The export directory holding the same float32 model also holds its INT8 twin.
    fp32_sha = sha256_file(fp32)
    exported = (work_dir / "onnx-export").glob("*/model.onnx")
    exports = [p for p in exported if sha256_file(p) == fp32_sha]
    int8 = exports[0].with_name("model.int8.onnx") if exports else None
    return checkpoints[0], fp32, int8 if int8 is not None and int8.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, default=Path("kd-work"))
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)

    checkpoint, fp32, int8 = latest_student(args.work_dir)
    model, _ = load_checkpoint(checkpoint)
    meta = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
    _, channels, height, width = json.loads(meta["input_shape"])
    shape = (int(channels), int(height), int(width))
    config = BenchmarkConfig(iterations=args.iterations, warmup=args.warmup)
    models = [(ONNX_VARIANT, fp32)] + ([(INT8_VARIANT, int8)] if int8 else [])
    rows, report = measure_inference(("student-kd", model), models, [], shape, config)
    report["models"] = {
        "checkpoint": str(checkpoint),
        "onnx": str(fp32),
        "int8": str(int8) if int8 else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "onnx_runtime.json", report)
    markdown = report_markdown(rows, report)
    write_text(args.out / "onnx_runtime.md", markdown)
    latency_chart(rows, args.out / "latency.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
