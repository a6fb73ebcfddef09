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
        "student.train.epochs=1",
        "student.model.name=cnn_tiny",
        "cache.views=2",
    ):
        args += ["--set", override]
    args += ["--seeds", "2", "--teacher-seeds", "2", "--methods", "config,dkd+ls,hinton+mixup"]
    assert benchmark("distill_quality").main(args) == 0
    report = json.loads((tmp_path / "distill_quality.json").read_text())
    assert set(report["methods"]) == {"config", "dkd+ls", "hinton+mixup"}
    config = report["methods"]["config"]
    # every teacher seed with every student seed, each paired with its student seed's baseline
    assert len(config["runs"]) == 4 and len(report["baseline"]["runs"]) == 2
    expected = 1 - config["test_error_mean"] / (1 - report["baseline"]["test_accuracy_mean"])
    assert abs(report["kd_error_reduction"] - expected) < 1e-12
    runs, base = config["runs"], report["baseline"]["runs"]
    differences = [runs[i][1] - base[i % 2][1] for i in range(4)]
    paired = config["paired_test_difference"]
    assert paired["estimate"] == pytest.approx(sum(differences) / 4)
    assert paired["interval"][0] <= paired["estimate"] <= paired["interval"][1]
    assert paired["n"] == 4
    # validation chooses: the method with the best mean validation accuracy
    best = max(report["methods"], key=lambda m: report["methods"][m]["val_accuracy_mean"])
    assert report["chosen_on_validation"] == best
    # mixup changes the views, so it is compared with its own baseline on those views
    assert report["methods"]["hinton+mixup"]["baseline"]["runs"] != report["baseline"]["runs"]
    assert report["methods"]["dkd+ls"]["distill"]["kind"] == "dkd"
    markdown = (tmp_path / "distill_quality.md").read_text()
    assert "kd_error_reduction" in markdown and "Chosen on validation" in markdown
