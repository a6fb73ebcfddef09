import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from components.report import (
    COLUMNS,
    VariantRow,
    accuracy_latency_scatter,
    comparison_markdown,
    confusion_chart,
    confusion_matrix,
    summary_markdown,
    training_curves,
    with_relative_figures,
    write_comparison_csv,
)

PNG_MAGIC = b"\x89PNG"


def row(
    run_id: str,
    variant: str,
    accuracy: float | None,
    p50: float | None,
    teacher_p50: float | None = None,
) -> VariantRow:
    return VariantRow(
        run_id=run_id,
        run_name=f"name-{run_id}",
        variant=variant,
        runtime="onnxruntime" if "onnx" in variant else "pytorch",
        test_accuracy=accuracy,
        parameters=1000,
        size_bytes=4096,
        p50_ms_batch1=p50,
        images_per_s_batch32=5000.0,
        threads=2,
        teacher_p50_ms_batch1=teacher_p50,
    )


def sample_rows() -> list[VariantRow]:
    return with_relative_figures(
        [
            row("run-a", "teacher", 0.99, 10.0, teacher_p50=10.0),
            row("run-a", "student-kd", 0.98, 2.0, teacher_p50=10.0),
            # ONNX Runtime: against the teacher's own ONNX Runtime timing, never PyTorch's
            row("run-a", "student-kd-onnx-int8", None, 1.0, teacher_p50=4.0),
            row("run-b", "student-kd", 0.97, 2.5),
        ]
    )


def assert_png_and_no_temp_files(path: Path) -> None:
    assert path.read_bytes()[:4] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_relative_figures_against_the_teacher_of_the_same_run() -> None:
    # given two runs, only the first with a teacher row
    rows = sample_rows()

    # then the order is kept and each figure compares with that run's teacher
    assert [(r.run_id, r.variant) for r in rows] == [
        ("run-a", "teacher"),
        ("run-a", "student-kd"),
        ("run-a", "student-kd-onnx-int8"),
        ("run-b", "student-kd"),
    ]
    teacher, kd, int8, other = rows
    assert teacher.speedup_vs_teacher == pytest.approx(1.0)
    assert teacher.accuracy_retained == pytest.approx(1.0)
    assert kd.speedup_vs_teacher == pytest.approx(5.0)
    assert kd.accuracy_retained == pytest.approx(0.98 / 0.99)
    # a missing accuracy leaves its ratio empty but not the speed-up, like for like
    assert int8.speedup_vs_teacher == pytest.approx(4.0)
    assert int8.accuracy_retained is None
    # no teacher row in run-b
    assert other.speedup_vs_teacher is None and other.accuracy_retained is None


def test_relative_figures_clear_stale_values_without_a_teacher() -> None:
    stale = dataclasses.replace(
        row("run-c", "student-kd", 0.9, 1.0), speedup_vs_teacher=3.0, accuracy_retained=0.5
    )
    (result,) = with_relative_figures([stale])
    assert result.speedup_vs_teacher is None and result.accuracy_retained is None


def test_markdown_formats_each_cell() -> None:
    # given one row with every figure and one with none
    full = VariantRow(
        run_id="0123456789abcdef",
        run_name="cifar-kd",
        variant="student-kd-onnx",
        runtime="onnxruntime",
        test_accuracy=0.91234,
        parameters=1234567,
        size_bytes=2048 + 512,
        p50_ms_batch1=1.23456,
        images_per_s_batch32=12345.6,
        threads=2,
        speedup_vs_teacher=5.4123,
        accuracy_retained=0.99412,
    )
    empty = VariantRow("fedcba9876543210", "bare", "teacher", "pytorch", *[None] * 5)

    # when
    lines = comparison_markdown([full, empty]).splitlines()

    # then: header, separator, one line per row
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[0].startswith(
        "| run | variant | runtime | threads | test accuracy [95% CI] | parameters |"
    )
    assert set(lines[1]) <= set("|-:") and lines[1].count("|") == len(COLUMNS) + 1
    assert len(lines) == 4
    assert lines[2] == (
        "| cifar-kd (01234567) | student-kd-onnx | onnxruntime | 2 | 0.9123 | 1,234,567 | 2.5 "
        "| 1.235 | 12,346 | 5.41x | 99.4% |"
    )
    assert lines[3] == "| bare (fedcba98) | teacher | pytorch | - | - | - | - | - | - | - | - |"


def test_markdown_escapes_a_pipe_in_the_run_name() -> None:
    odd = dataclasses.replace(row("run-a", "teacher", 0.9, 1.0), run_name="a|b")
    line = comparison_markdown([odd]).splitlines()[2]
    assert line.startswith("| a\\|b (run-a) |")


def test_csv_round_trip(tmp_path: Path) -> None:
    # given
    rows = sample_rows()
    path = tmp_path / "compare.csv"

    # when
    assert write_comparison_csv(rows, path) == path
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        read = list(reader)

    # then the header is the field names and the values read back
    assert reader.fieldnames == [f.name for f in dataclasses.fields(VariantRow)]
    assert len(read) == len(rows)
    first, _, int8, other = read
    assert first["run_id"] == "run-a" and first["variant"] == "teacher"
    assert float(first["test_accuracy"]) == 0.99
    assert int(first["parameters"]) == 1000 and int(first["size_bytes"]) == 4096
    assert float(read[1]["speedup_vs_teacher"]) == rows[1].speedup_vs_teacher
    assert int8["test_accuracy"] == "" and int8["accuracy_retained"] == ""
    assert other["speedup_vs_teacher"] == "" and other["accuracy_retained"] == ""
    assert [p.name for p in tmp_path.iterdir()] == ["compare.csv"]


def test_scatter_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "scatter.png"
    assert accuracy_latency_scatter(sample_rows(), path) == path
    assert_png_and_no_temp_files(path)


def test_scatter_without_data_still_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    accuracy_latency_scatter([row("run-a", "teacher", None, 1.0)], path)
    assert_png_and_no_temp_files(path)


def test_training_curves_write_a_png(tmp_path: Path) -> None:
    # given histories with and without 'epoch', one lacking val figures, extra keys
    histories = {
        "teacher": [
            {"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5, "val_loss": 1.1 / e, "lr": 0.1}
            for e in (1, 2, 3)
        ],
        "student-kd": [
            {"train_loss": 2.0, "train_accuracy": 0.4, "val_loss": 2.1, "val_accuracy": 0.41},
            {"train_loss": 1.0, "train_accuracy": 0.6, "val_loss": 1.2, "val_accuracy": 0.59},
        ],
        "student-baseline": [],
    }
    path = tmp_path / "curves.png"
    assert training_curves(histories, path) == path
    assert_png_and_no_temp_files(path)


def test_confusion_matrix_counts() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 0, 2])

    matrix = confusion_matrix(labels, predictions, num_classes=3)

    assert matrix.dtype == np.int64 and matrix.shape == (3, 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert matrix.sum() == len(labels)
    # the diagonal is the correct predictions
    assert np.trace(matrix) == (labels == predictions).sum()


def test_confusion_matrix_of_no_samples_is_zero() -> None:
    matrix = confusion_matrix(np.array([], int), np.array([], int), num_classes=2)
    np.testing.assert_array_equal(matrix, np.zeros((2, 2), np.int64))


@pytest.mark.parametrize(
    ("labels", "predictions"),
    [
        ([0, 1], [0, 1, 1]),  # shapes differ
        ([0, 3], [0, 1]),  # label out of range
        ([0, 1], [0, -1]),  # negative prediction
        ([0.5, 1], [0, 1]),  # not a class index
    ],
)
def test_confusion_matrix_rejects_bad_input(labels: list, predictions: list) -> None:
    with pytest.raises(ValueError):
        confusion_matrix(np.array(labels), np.array(predictions), num_classes=3)


def test_confusion_chart_writes_a_png(tmp_path: Path) -> None:
    matrix = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    path = tmp_path / "confusion.png"
    assert confusion_chart(matrix, ["cat", "dog", "bird"], path, "student-kd") == path
    assert_png_and_no_temp_files(path)


def test_confusion_chart_rejects_a_mismatched_matrix(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        confusion_chart(np.zeros((3, 3), np.int64), ["a", "b"], tmp_path / "c.png", "t")


def test_summary_has_a_latency_column_per_benchmarked_batch() -> None:
    rows = [row("run-a", "teacher", 0.99, 10.0), row("run-a", "student-kd-onnx", 0.98, 2.0)]
    p50 = {("teacher", 1): 10.0, ("teacher", 32): 50.0, ("student-kd-onnx", 1): 2.0}
    lines = summary_markdown(rows, p50).splitlines()
    assert lines[0].endswith("| p50 ms @ batch 1 | p50 ms @ batch 32 |")
    assert lines[2] == "| teacher | pytorch | 0.9900 | 1,000 | 4.0 | 10.000 | 50.000 |"
    assert lines[3] == "| student-kd-onnx | onnxruntime | 0.9800 | 1,000 | 4.0 | 2.000 | - |"
