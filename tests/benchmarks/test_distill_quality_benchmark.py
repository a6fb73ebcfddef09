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
    args += ["--seeds", "2", "--methods", "config,dkd+ls,hinton+mixup"]
    assert benchmark("distill_quality").main(args) == 0
    report = json.loads((tmp_path / "distill_quality.json").read_text())
    assert set(report["methods"]) == {"config", "dkd+ls", "hinton+mixup"}
    config = report["methods"]["config"]
    assert len(config["runs"]) == 2 and len(report["baseline"]["runs"]) == 2
    expected = 1 - config["error_mean"] / report["baseline"]["error_mean"]
    assert abs(report["kd_error_reduction"] - expected) < 1e-12
    # mixup changes the views, so it is compared with its own baseline on those views
    assert report["methods"]["hinton+mixup"]["baseline"]["runs"] != report["baseline"]["runs"]
    assert report["methods"]["dkd+ls"]["distill"]["kind"] == "dkd"
    assert "kd_error_reduction" in (tmp_path / "distill_quality.md").read_text()
