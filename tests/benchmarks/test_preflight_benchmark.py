"""The pre-flight timing benchmark runs as users run it (one repeat here)."""

import json
from pathlib import Path

import pytest

from tests.helpers import benchmark


@pytest.mark.slow
def test_preflight_benchmark_times_the_checks_and_writes_nothing(tmp_path: Path) -> None:
    assert benchmark("preflight").main(["--out", str(tmp_path), "--repeats", "1"]) == 0
    report = json.loads((tmp_path / "preflight.json").read_text())
    assert report["preflight_seconds"] > 0 and len(report["seconds"]) == 1
    assert report["files_written"] == []
    assert "kd run --check" in (tmp_path / "preflight.md").read_text()
