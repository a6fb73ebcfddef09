"""The distillation-quality benchmark runs as users run it (--quick, on tiny images here), its
figures follow from the units it stored, and a second call trains nothing again."""

import json
from pathlib import Path

import numpy as np
import pytest

from components.stats import mean_interval
from tests.helpers import benchmark, quadrant_images

TINY = (
    "data.kind=image_folder",
    "data.image_size=8",
    "data.channels=1",
    "teacher.model.name=cnn_small",
    "teacher.train.batch_size=64",
    "student.model.name=cnn_tiny",
    "student.train.batch_size=64",
)


@pytest.mark.slow
def test_distill_quality_chooses_on_folds_reports_on_test_and_resumes(tmp_path: Path) -> None:
    root = quadrant_images(tmp_path / "images", per_class=40)
    out = tmp_path / "out"
    args = ["--out", str(out), "--quick", "--work", str(tmp_path / "work")]
    for override in (*TINY, f"data.root={root}"):
        args += ["--set", override]
    module = benchmark("distill_quality")
    assert module.main(args) == 0
    report = json.loads((out / "distill_quality.json").read_text())
    for key in ("gap_closed_by_default", "default_vs_control_ci_low"):
        assert key in report
    assert "kd_error_reduction_vs_best_baseline" in report
    assert (out / "patience.png").stat().st_size > 0 and (out / "distill_quality.md").is_file()
    assert report["phases_done"] == ["teacher", "method", "patience", "control", "report"]
    assert "Partial" not in (out / "distill_quality.md").read_text()

    # every phase's choice: the best mean replaces the incumbent only when significant
    for phase in ("teacher", "method"):
        decision = report[phase]["decision"]
        comparisons = decision["comparisons"]
        best = max(comparisons, key=lambda n: comparisons[n]["mean"])
        assert decision["best_mean"] == best
        significant = comparisons[best]["p_value"] < 0.05
        assert decision["chosen"] == (best if significant else "config")
        assert sum(decision["reselection_rate"].values()) == pytest.approx(1)
        # one observation per unit: the interval's n is the number of units
        assert comparisons[best]["difference"]["n"] == report["protocol"]["units"]

    # the headline figures follow from the per-unit test accuracies of the report units
    default = report["default"]
    kd, control, teacher = (np.array(default["per_unit"][k]) for k in ("kd", "control", "teacher"))
    assert len(kd) == default["units"] == report["protocol"]["report_units"]
    interval = mean_interval(kd - control)
    assert report["default_vs_control_ci_low"] == pytest.approx(interval.interval[0])
    gap = teacher.mean() - control.mean()
    expected = (kd.mean() - control.mean()) / gap if gap > 0 else None
    assert report["gap_closed_by_default"] == pytest.approx(expected)
    assert report["kd_error_reduction_vs_best_baseline"] == pytest.approx(
        1 - (1 - kd.mean()) / (1 - control.mean())
    )
    # the patience grid: every budget, the distilled student and its control, with costs
    grid = report["patience"]["grid"]
    assert {(c["epochs"], c["views"]) for c in grid} >= {(3, 2), (3, 4), (6, 2), (6, 4)}
    assert all(c["kd_held_out"]["n"] == report["protocol"]["patience_units"] for c in grid)

    # a second call reuses every stored unit: nothing is trained again
    units = sorted((out / "distill_quality_units").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in units]
    assert module.main(args) == 0
    assert sorted((out / "distill_quality_units").rglob("*.json")) == units
    assert [p.stat().st_mtime_ns for p in units] == stamps
    assert json.loads((out / "distill_quality.json").read_text())["default"] == default

    # a call stopped after a phase says which phases its figures come from
    assert module.main([*args, "--until", "method"]) == 0
    assert json.loads((out / "distill_quality.json").read_text())["phases_done"] == [
        "teacher",
        "method",
    ]
    assert "patience, control, report not yet run" in (out / "distill_quality.md").read_text()


def test_the_committed_units_are_found_by_the_current_code(tmp_path: Path) -> None:
    # Hours of CPU are stored under benchmarks/results/distill_quality_units, keyed by what
    # produced each unit: a change that moves a key (a new config field in a hashed section,
    # say) would silently throw them away and train them all again.
    module = benchmark("distill_quality")
    store = Path(__file__).resolve().parents[2] / "benchmarks/results/distill_quality_units"
    ctx = module.Context(None, module.Protocol().base, store, tmp_path)
    assert (store / "teachers" / f"{module.teacher_key(ctx, 0, ())}.json").is_file()
    for student in (
        module.Student((), ()),  # the config's method, from the config's teacher
        module.Student((), ("distill={kind: wttm}",)),
        module.Student((), (), "cached-ls0.1"),  # a control
    ):
        assert (store / "students" / f"{module.student_key(ctx, 0, student)}.json").is_file()
