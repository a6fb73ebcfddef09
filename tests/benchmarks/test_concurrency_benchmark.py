"""The concurrency benchmark's mechanics (one process alone, two at once, the ratio), on
`kd run --check` processes: whole runs take minutes (benchmarks/results/concurrency.md)."""

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES
from tests.helpers import benchmark


@pytest.mark.slow
def test_concurrency_benchmark_writes_the_ratio(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--check-only"]
    args += [a for o in TINY_OVERRIDES for a in ("--set", o)]
    assert benchmark("concurrency").main(args) == 0
    report = json.loads((tmp_path / "concurrency.json").read_text())
    together, alone = report["together_seconds"], report["alone_seconds"]
    assert len(together) == 2 and alone > 0
    assert report["concurrent_vs_alone_ratio"] == pytest.approx(sum(together) / 2 / alone, rel=0.05)
    assert "concurrent_vs_alone_ratio" in (tmp_path / "concurrency.md").read_text()
