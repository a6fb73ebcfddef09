"""The handoff bundle: everything the person deploying the model needs, nothing of ours.

    model.onnx            float32 model (metadata inside: labels, preprocessing, parity, ...)
    model.int8.onnx       INT8 model, only when it was kept
    labels.json           class index -> name
    preprocessing.json    how to turn an image file into the model's input
    parity.json           the float32 model against PyTorch on the test split
    benchmark.json        latency and throughput measured on the exporting machine
    MODEL_CARD.md         what it is, data, accuracy, latency, intended input, limits

The bundle is written under a temporary name and renamed whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from components.data import DatasetInfo
from components.io import atomic_dir, sha256_file
from components.stats import format_accuracy


def preprocessing_spec(info: DatasetInfo) -> dict[str, Any]:
    """The input recipe, enough to reproduce the model's input without our code."""
    channels = info.in_channels
    return {
        "color_mode": "L" if channels == 1 else "RGB",
        "resize": {"height": info.image_size[0], "width": info.image_size[1], "filter": "bilinear"},
        "scale": 1 / 255,
        "mean": info.mean,
        "std": info.std,
        "layout": "NCHW",
        "dtype": "float32",
        "input_name": "input",
        "output_name": "logits",
        "formula": "x = (pixel / 255 - mean[c]) / std[c]",
    }


CHECKSUMS = "checksums.json"  # file name -> sha256 of every other file in the bundle


def write_bundle(
    directory: Path,
    model: Path,
    int8_model: Path | None,
    info: DatasetInfo,
    parity: dict[str, Any],
    benchmark: dict[str, Any],
    card: str,
) -> Path:
    with atomic_dir(directory) as tmp:
        shutil.copyfile(model, tmp / "model.onnx")
        if int8_model is not None:
            shutil.copyfile(int8_model, tmp / "model.int8.onnx")
        (tmp / "labels.json").write_text(json.dumps(dict(enumerate(info.class_names)), indent=2))
        (tmp / "preprocessing.json").write_text(json.dumps(preprocessing_spec(info), indent=2))
        (tmp / "parity.json").write_text(json.dumps(parity, indent=2))
        (tmp / "benchmark.json").write_text(json.dumps(benchmark, indent=2))
        (tmp / "MODEL_CARD.md").write_text(card)
        # What a deployment checks before trusting the bundle (components.predict does).
        sums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n")
    return directory


def model_card(
    *,
    title: str,
    description: str,
    data: DatasetInfo,
    data_source: str,
    accuracy_rows: list[tuple[str, str, float, int]],
    latency_rows: list[tuple[str, int, int, float, float]],
    int8_reason: str,
    parity: dict[str, Any],
    run_ids: dict[str, str],
) -> str:
    """Markdown model card. Rows: (model, runtime, test accuracy, parameters) and
    (variant, threads, batch, p50 ms, images /s)."""
    prep = preprocessing_spec(data)
    colour = "grayscale" if prep["color_mode"] == "L" else "RGB"
    n_test = data.split_sizes.get("test", 0)
    lines = [
        f"# {title}",
        "",
        description,
        "",
        "## Data",
        f"- Source: {data_source}; dataset fingerprint `{data.fingerprint}`.",
        f"- Split sizes: {data.split_sizes}; classes: {', '.join(data.class_names)}.",
        "",
        f"## Accuracy (held-out test split, n = {n_test}: reported, never decided on)",
        "| model | runtime | test accuracy [95% interval] | parameters |",
        "|---|---|---:|---:|",
        *(f"| {m} | {r} | {format_accuracy(a, n_test)} | {p:,} |" for m, r, a, p in accuracy_rows),
        "",
        f"Parity of `model.onnx` against PyTorch on {parity['inputs']} test images: max |diff| "
        f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.4f}.",
        f"INT8 (decided on the validation split): {int8_reason}.",
        "",
        "## Latency (ONNX Runtime, CPU of the exporting machine)",
        "| variant | threads | batch | p50 ms | images/s |",
        "|---|---:|---:|---:|---:|",
        *(f"| {v} | {n} | {b} | {p:.3f} | {t:,.0f} |" for v, n, b, p, t in latency_rows),
        "",
        "## Intended input",
        f"- One or more {colour} images resized to {data.image_size[0]}x"
        f"{data.image_size[1]} (bilinear), as float32 `{prep['layout']}` tensors named "
        f"`{prep['input_name']}` with a dynamic batch dimension.",
        f"- `{prep['formula']}` with mean {data.mean} and std {data.std}; output `logits` "
        "(apply softmax for probabilities). `preprocessing.json` holds the same recipe.",
        "",
        "## Limits",
        "- Trained and evaluated only on the data above; accuracy on other image "
        "distributions (other scanners, fonts, colours, sizes) is unknown.",
        "- Latency was measured on the machine that ran the pipeline; measure on yours.",
        f"- Test accuracy rests on {data.split_sizes.get('test', 0)} images: one error moves "
        f"it by {100 / max(1, data.split_sizes.get('test', 1)):.2f} points.",
        "",
        "## Provenance",
        *(f"- {k}: `{v}`" for k, v in run_ids.items()),
        "",
    ]
    return "\n".join(lines)


def handoff_card(
    *,
    model_name: str,
    method: str,
    teacher: tuple[str, int],
    student: tuple[str, int],
    accuracy_rows: list[tuple[str, str, float, int]],
    benchmark_results: list[dict[str, Any]],
    int8_reason: str,
    export: dict[str, Any],
    data: DatasetInfo,
    data_source: str,
    provenance: dict[str, str],
    recipes: dict[str, str] | None = None,
) -> str:
    """The model card of a handed-off student. ``recipes``: model -> the input it was fed
    (the teacher's own, when it came from elsewhere). ``teacher``/``student``: (architecture,
    parameters); ``export``: the accepted export's exporter, opset and parity report;
    ``benchmark_results``: the benchmark's rows, of which the ONNX Runtime ones are shown."""
    (teacher_arch, teacher_params), (student_arch, student_params) = teacher, student
    return model_card(
        title=f"{model_name}: distilled {student_arch} student",
        description=(
            f"A {student_arch} ({student_params:,} parameters) distilled with {method} from a "
            f"{teacher_arch} teacher ({teacher_params:,} parameters) by kd-pipeline, exported "
            f"to ONNX (opset {export['opset']}, {export['exporter']} exporter)."
        ),
        data=data,
        data_source=data_source,
        accuracy_rows=accuracy_rows,
        latency_rows=[
            (r["variant"], r["threads"], r["batch_size"], r["p50_ms"], r["throughput_per_s"])
            for r in benchmark_results
            if r["runtime"] == "onnxruntime"
        ],
        int8_reason=int8_reason,
        parity=export["parity"],
        run_ids={**provenance, **{f"{k} input": v for k, v in (recipes or {}).items()}},
    )
