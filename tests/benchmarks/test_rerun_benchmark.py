"""The rerun benchmark runs `kd run` three times (tiny config, in this process: the same
command line, without three process start-ups) and reports the ratio and what was reused."""

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES
from tests.helpers import benchmark


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_rerun_benchmark_reports_the_ratio_and_what_was_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--out", str(tmp_path), "--in-process"]
    args += [a for o in TINY_OVERRIDES for a in ("--set", o)]
    assert benchmark("rerun").main(args) == 0
    report = json.loads((tmp_path / "rerun.json").read_text())
    first, rerun, changed = report["runs"]
    assert report["rerun_vs_first_ratio"] == round(rerun["seconds"] / first["seconds"], 4)
    assert first["reused_stages"] == "none"
    assert rerun["computed_stages"] == "none"
    assert changed["reused_stages"] == "teacher,logit-cache"
    assert "in one process" in report["measured"]
    assert "rerun_vs_first_ratio" in (tmp_path / "rerun.md").read_text()
    assert not list(tmp_path.glob("kd-work"))  # the scratch space is its own, and removed
