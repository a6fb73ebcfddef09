"""The distillation-quality benchmark runs as users run it (tiny settings here)."""

import json
from pathlib import Path

import pytest

from tests.helpers import benchmark


@pytest.mark.slow
def test_distill_quality_writes_json_and_markdown(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path)]
    for override in (
        "teacher.model.name=cnn_small",
        "teacher.train.epochs=1",
        "teacher.train.batch_size=128",
        "student.train.epochs=1",
        "student.train.batch_size=128",
        "student.model.name=cnn_tiny",
        "cache.views=2",
        "student.baseline.label_smoothing=[0.0]",  # two control candidates: cached, fresh
    ):
        args += ["--set", override]
    args += ["--seeds", "2", "--teacher-seeds", "2", "--tune-seeds", "1"]
    args += ["--methods", "config,mlkd"]
    assert benchmark("distill_quality").main(args) == 0
    report = json.loads((tmp_path / "distill_quality.json").read_text())
    assert set(report["methods"]) == {"config", "mlkd"}
    config = report["methods"]["config"]
    # every teacher seed with every student seed, each paired with its student seed's control
    assert len(config["runs"]) == 4 and len(report["baseline"]["runs"]) == 2
    # each seed's control is its best candidate on validation, whatever the test split says
    candidates = report["baseline_candidates"]
    assert set(candidates) == {"cached-ls0", "fresh-ls0"}
    for seed, chosen in enumerate(report["baseline"]["chosen_candidates"]):
        best_val = max(c["runs"][seed][0] for c in candidates.values())
        assert candidates[chosen]["runs"][seed][0] == best_val
        assert report["baseline"]["runs"][seed] == candidates[chosen]["runs"][seed]
    expected = 1 - config["test_error_mean"] / (1 - report["baseline"]["test_accuracy_mean"])
    assert abs(report["kd_error_reduction_vs_best_baseline"] - expected) < 1e-12
    assert report["error_ratio"] == pytest.approx(1 - expected)
    runs, base = config["runs"], report["baseline"]["runs"]
    differences = [runs[i][1] - base[i % 2][1] for i in range(4)]
    paired = config["paired_test_difference"]
    assert paired["estimate"] == pytest.approx(sum(differences) / 4)
    assert paired["interval"][0] <= paired["estimate"] <= paired["interval"][1]
    assert paired["n"] == 4
    # a method's settings are the ones with the best validation accuracy in tuning
    mlkd = report["methods"]["mlkd"]
    best = max(range(2), key=lambda i: mlkd["tuning_val_accuracy"][i])
    assert mlkd["settings"] == mlkd["settings_tried"][best]
    assert mlkd["augment"]["strong"] is not None  # two views, from a two-view cache
    # validation chooses: the method with the best mean validation accuracy
    best = max(report["methods"], key=lambda m: report["methods"][m]["val_accuracy_mean"])
    assert report["chosen_on_validation"] == best
    assert report["goal_met"] == (
        report["error_ratio"] <= 0.70 and report["compression_ratio"] >= 20
    )
    markdown = (tmp_path / "distill_quality.md").read_text()
    assert "kd_error_reduction" in markdown and "Chosen on validation" in markdown
