"""The rerun benchmark runs `kd run` three times as users do (tiny config) and reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from tests.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_rerun_benchmark_reports_the_ratio_and_what_was_reused(tmp_path: Path) -> None:
    args = [sys.executable, str(REPO / "benchmarks" / "rerun.py"), "--out", str(tmp_path)]
    args += [a for o in TINY_OVERRIDES for a in ("--set", o)]
    # The session's Prefect server: each `kd run` would otherwise start a temporary one.
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "rerun.json").read_text())
    first, rerun, changed = report["runs"]
    assert report["rerun_vs_first_ratio"] == round(rerun["seconds"] / first["seconds"], 4)
    assert first["reused_stages"] == "none"
    assert rerun["computed_stages"] == "none"
    assert changed["reused_stages"] == "teacher,logit-cache"
    assert "rerun_vs_first_ratio" in (tmp_path / "rerun.md").read_text()
    assert not list(tmp_path.glob("kd-work"))  # the scratch space is its own, and removed
