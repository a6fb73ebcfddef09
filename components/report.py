"""Cross-run comparison of the model variants (`kd compare`): a markdown table, a CSV, and
charts of accuracy against latency, training curves and confusion matrices.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from components.io import atomic_path
from components.stats import format_accuracy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = (
    "run",
    "variant",
    "runtime",
    "threads",
    "test accuracy [95% CI]",
    "parameters",
    "size (KiB)",
    "p50 ms @ batch 1",
    "images/s @ batch 32",
    "speed-up vs teacher (same runtime and threads)",
    "accuracy retained",
)

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass(frozen=True)
class VariantRow:
    """One model variant of one pipeline run, as `kd compare` shows it."""

    run_id: str  # the pipeline's parent MLflow run id
    run_name: str
    variant: str  # the model: a stage's declared variant (teacher, student-kd-onnx, ...)
    runtime: str  # "pytorch" or "onnxruntime"
    test_accuracy: float | None
    parameters: int | None
    size_bytes: int | None
    p50_ms_batch1: float | None
    images_per_s_batch32: float | None
    test_n: int | None = None  # test examples behind test_accuracy
    threads: int | None = None  # the thread count the latency figures were measured on
    # The teacher's p50 at batch 1 in this row's runtime and thread count, when measured: a
    # speed-up compares like with like, never an ONNX Runtime model with a PyTorch one.
    teacher_p50_ms_batch1: float | None = None
    speedup_vs_teacher: float | None = None  # filled by with_relative_figures
    accuracy_retained: float | None = None  # filled by with_relative_figures


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    # A zero denominator is a missing measurement, not an infinite speed-up.
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def with_relative_figures(rows: list[VariantRow]) -> list[VariantRow]:
    """Fill speedup_vs_teacher (the teacher's p50 at batch 1 in the same runtime and thread
    count / this variant's) and accuracy_retained (this variant's test accuracy / the
    teacher's, the teacher row of the same run_id); None where a figure is missing, the
    teacher was not timed in that runtime, or there is no teacher row. Order kept."""
    teachers: dict[str, VariantRow] = {}
    for row in rows:
        if row.variant == "teacher":
            teachers.setdefault(row.run_id, row)
    filled = []
    for row in rows:
        teacher = teachers.get(row.run_id)
        if teacher is None:
            filled.append(dataclasses.replace(row, speedup_vs_teacher=None, accuracy_retained=None))
            continue
        filled.append(
            dataclasses.replace(
                row,
                speedup_vs_teacher=_ratio(row.teacher_p50_ms_batch1, row.p50_ms_batch1),
                accuracy_retained=_ratio(row.test_accuracy, teacher.test_accuracy),
            )
        )
    return filled


def accuracy_cell(row: VariantRow) -> str:
    """``0.9780 [0.9601, 0.9880]``: the test accuracy with its Wilson interval, when n is known."""
    if row.test_accuracy is None:
        return "-"
    if not row.test_n:
        return f"{row.test_accuracy:.4f}"
    return format_accuracy(row.test_accuracy, row.test_n)


def summary_markdown(rows: list[VariantRow], p50_ms: dict[tuple[str, int], float]) -> str:
    """The run summary: every variant of one run with its test accuracy and 95% interval, and
    its p50 at each benchmarked batch size (``p50_ms``: (variant, batch) -> ms; '-' where a
    variant was not measured)."""
    batches = sorted({batch for _, batch in p50_ms})
    n = next((r.test_n for r in rows if r.test_n), None)
    accuracy = f"test accuracy [95% CI], n = {n}" if n else "test accuracy"
    head = f"| model | runtime | {accuracy} | parameters | size (KiB) | "
    head += " | ".join(f"p50 ms @ batch {b}" for b in batches) + " |"
    lines = [head, "|" + "---|" * (5 + len(batches))]
    for r in rows:
        latency = " | ".join(_cell(p50_ms.get((r.variant, b)), ".3f") for b in batches)
        size = None if r.size_bytes is None else r.size_bytes / 1024
        lines.append(
            f"| {r.variant} | {r.runtime} | {accuracy_cell(r)} | "
            f"{_cell(r.parameters, ',')} | {_cell(size, '.1f')} | {latency} |"
        )
    return "\n".join(lines) + "\n"


def _cell(value: float | int | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def comparison_markdown(rows: list[VariantRow]) -> str:
    """A GitHub markdown table (header, separator, one line per row), missing figures as '-'.
    run column: run_name followed by the first 8 chars of run_id in parentheses. accuracy 4
    decimals, parameters with thousands separators, KiB 1 decimal, p50 3 decimals, images/s
    integer with thousands separators, speed-up like '5.41x', retained as percent with 1
    decimal like '99.4%'."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---:|" * (len(COLUMNS) - 3),
    ]
    for r in rows:
        cells = [
            f"{r.run_name} ({r.run_id[:8]})",
            r.variant,
            r.runtime,
            _cell(r.threads, "d"),
            accuracy_cell(r),
            _cell(r.parameters, ","),
            _cell(None if r.size_bytes is None else r.size_bytes / 1024, ".1f"),
            _cell(r.p50_ms_batch1, ".3f"),
            _cell(r.images_per_s_batch32, ",.0f"),
            _cell(r.speedup_vs_teacher, ".2f", "x"),
            _cell(r.accuracy_retained, ".1%"),
        ]
        # A '|' in a free-text run name would split the cell.
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison_csv(rows: list[VariantRow], path: Path) -> Path:
    """CSV with machine-readable columns: the dataclass field names as header, raw values
    (empty string for None). Written atomically; returns path."""
    names = [f.name for f in dataclasses.fields(VariantRow)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            values = dataclasses.asdict(row)
            writer.writerow({k: "" if v is None else v for k, v in values.items()})
    return path


def _pyplot() -> ModuleType:
    import matplotlib

    # Agg: no display on CI or worker machines.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        # The temp name ends in .tmp-xxxx, so matplotlib cannot infer the format from it.
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
    return path


def _style(index: int) -> tuple[str, str]:
    """Marker and colour of the ``index``-th variant (in first-seen order)."""
    return MARKERS[index % len(MARKERS)], f"C{index % 10}"


def accuracy_latency_scatter(rows: list[VariantRow], path: Path) -> Path:
    """PNG scatter of test accuracy (y) against p50 latency at batch 1 in ms (x, log scale):
    one point per variant per run, a marker/colour per variant, each point labelled with the
    run name (or the first 8 chars of its run_id when the name is empty). Rows missing either
    figure are skipped; an empty plot still writes a valid PNG with a 'no data' note. Written
    atomically; returns path."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    points = [
        r
        for r in rows
        if r.test_accuracy is not None and r.p50_ms_batch1 is not None and r.p50_ms_batch1 > 0
    ]
    by_variant: dict[str, list[VariantRow]] = {}
    for r in points:
        by_variant.setdefault(r.variant, []).append(r)
    for index, (variant, group) in enumerate(by_variant.items()):
        marker, colour = _style(index)
        axis.scatter(
            [r.p50_ms_batch1 for r in group],
            [r.test_accuracy for r in group],
            marker=marker,
            color=colour,
            label=variant,
        )
        for r in group:
            axis.annotate(
                r.run_name or r.run_id[:8],
                (r.p50_ms_batch1, r.test_accuracy),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    if points:
        # Log only with data: an empty log axis warns and picks arbitrary limits.
        axis.set_xscale("log")
        axis.legend(fontsize=7)
    else:
        axis.text(0.5, 0.5, "no data", ha="center", va="center", transform=axis.transAxes)
    axis.set(xlabel="p50 latency at batch 1 (ms)", ylabel="test accuracy")
    axis.set_title("Accuracy against latency")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def training_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> Path:
    """PNG with two panels, loss and accuracy against epoch, one colour per model; solid line
    for train_*, dashed for val_*. Each history is a list of per-epoch dicts with keys 'epoch',
    'train_loss', 'train_accuracy', 'val_loss', 'val_accuracy' (other keys ignored; missing
    keys skipped; without 'epoch' the 1-based position is the epoch). Atomic; returns path."""
    plt = _pyplot()
    from matplotlib import ticker

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for index, (model, history) in enumerate(histories.items()):
        # The training loop's own history has no 'epoch' key: its position is the epoch.
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
            for split, line in (("train", "-"), ("val", "--")):
                key = f"{split}_{metric}"
                xy = [(e, h[key]) for e, h in zip(epochs, history, strict=True) if key in h]
                if xy:
                    axis.plot(
                        *zip(*xy, strict=True),
                        linestyle=line,
                        marker=".",
                        color=f"C{index % 10}",
                        label=f"{model} {split}",
                    )
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.set(xlabel="epoch", ylabel=metric, title=metric)
        axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (num_classes, num_classes) counts, rows = true class, columns = predicted.
    Raises ValueError when shapes differ or a value is outside [0, num_classes)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and (
            values.min() < 0
            or values.max() >= num_classes
            or not np.array_equal(values, np.floor(values))
        ):
            raise ValueError(f"{name} must be class indices in [0, {num_classes})")
    flat = labels.astype(np.int64).ravel() * num_classes + predictions.astype(np.int64).ravel()
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def confusion_chart(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """PNG heat map of the matrix with counts written in each cell and axis labels 'true' and
    'predicted', class names as tick labels. Raises ValueError when the matrix is not square
    with one row per class name. Atomic; returns path."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix {matrix.shape} does not match {n} class names")
    plt = _pyplot()
    size = max(4.0, 0.5 * n + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    # White text on the dark half of the colour scale keeps every count readable.
    threshold = matrix.max() / 2 if matrix.size else 0
    spec = "d" if np.issubdtype(matrix.dtype, np.integer) else ".2f"
    for i in range(n):
        for j in range(n):
            axis.text(
                j,
                i,
                format(matrix[i, j], spec),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] > threshold else "black",
            )
    axis.set_xticks(range(n), class_names, rotation=45, ha="right")
    axis.set_yticks(range(n), class_names)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    return _save(figure, path)


def patience_chart(grid: list[dict[str, Any]], path: Path) -> Path:
    """Held-out accuracy against student epochs (log scale), the distilled student (solid)
    and its control (dashed), one colour per number of cached views, each point the mean
    over units with its 95% interval. ``grid``: one dict per budget with ``epochs``,
    ``views``, ``kd_held_out`` and ``control_held_out`` (estimates with ``interval``).
    Atomic; returns path."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, views in enumerate(sorted({c["views"] for c in grid})):
        cells = sorted((c for c in grid if c["views"] == views), key=lambda c: c["epochs"])
        epochs = [c["epochs"] for c in cells]
        for key, line, label in (
            ("kd_held_out", "-", "distilled"),
            ("control_held_out", "--", "control"),
        ):
            means = np.array([c[key]["estimate"] for c in cells])
            low = means - np.array([c[key]["interval"][0] for c in cells])
            high = np.array([c[key]["interval"][1] for c in cells]) - means
            axis.errorbar(
                epochs,
                means,
                yerr=[low, high],
                linestyle=line,
                marker="o" if line == "-" else "s",
                capsize=3,
                color=f"C{index % 10}",
                label=f"{label}, {views} views",
            )
    axis.set_xscale("log", base=2)
    axis.set_xticks(sorted({c["epochs"] for c in grid}))
    axis.get_xaxis().set_major_formatter("{x:.0f}")
    axis.set(
        xlabel="student epochs",
        ylabel="held-out accuracy (mean over units, 95% CI)",
        title="Patience: distilled student and control at equal budgets",
    )
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def reliability_chart(
    before: list[dict[str, Any]], after: list[dict[str, Any]], temperature: float, path: Path
) -> Path:
    """The reliability diagram: accuracy against mean confidence per confidence bin, before
    and after temperature scaling (the diagonal is a perfectly calibrated model), with each
    bin's share of the images beneath. Atomic; returns path."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for rows, style, label in (
        (before, "o-", "as trained (T = 1)"),
        (after, "s--", f"temperature-scaled (T = {temperature:.2f})"),
    ):
        kept = [r for r in rows if r["count"]]
        top.plot([r["confidence"] for r in kept], [r["accuracy"] for r in kept], style, label=label)
    top.set(ylabel="accuracy in the bin", title="Reliability on the test split", ylim=(0, 1.02))
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    total = max(1, sum(r["count"] for r in after))
    for rows, offset, label in ((before, -0.25, "T = 1"), (after, 0.25, "scaled")):
        width = rows[0]["high"] - rows[0]["low"]
        centres = [(r["low"] + r["high"]) / 2 + offset * width for r in rows]
        bottom.bar(centres, [r["count"] / total for r in rows], width=width / 2, label=label)
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="share", xlim=(0, 1))
    bottom.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)
