"""The retraining benchmark runs `kd run` night after night on a growing ImageFolder (tiny
config, in this process) and reports what the second night cost and moved."""

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES
from tests.helpers import benchmark


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_a_night_of_growth_moves_nothing_and_runs_the_teacher_only_on_new_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--out", str(tmp_path), "--in-process", "--nights", "2", "--images", "770"]
    args += ["--worse-night", "0", *(a for o in TINY_OVERRIDES for a in ("--set", o))]
    assert benchmark("retrain").main(args) == 0
    report = json.loads((tmp_path / "retrain.json").read_text())
    first, second = report["nights"]
    assert (first["images"], second["images"]) == (700, 770)
    assert first["teacher_kept_from_run"] is None and second["teacher_kept_from_run"]
    # 10% more images: the teacher ran on about a tenth of the grown training set, the
    # images already there stayed in their splits, and every validation image was compared
    assert first["teacher_rows_computed"] == first["cache_rows"]
    assert 0 < report["teacher_forward_fraction"] < 0.2
    assert report["moved_between_splits"] == 0
    assert report["promotion_compared_fraction"] == 1.0
    assert second["n_overlap_removed"] == 0 and second["champion_version"] == "1"
    assert "teacher_forward_fraction" in (tmp_path / "retrain.md").read_text()
    assert not list(tmp_path.glob("kd-work"))  # the scratch space is its own, and removed
