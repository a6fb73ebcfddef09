"""The ImageNet-shaped cache script runs as users run it, on a small fraction of the rows."""

import json
from pathlib import Path

import pytest

from tests.helpers import benchmark


@pytest.mark.slow
def test_cache_scale_builds_reads_and_extrapolates(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--fraction", "0.004", "--cold-seconds", "1"]
    assert benchmark("cache_scale").main(args) == 0
    report = json.loads((tmp_path / "cache_scale.json").read_text())
    # top-10 of 1,000 classes: float16 values, uint16 indices, one float32 leftover LSE
    assert report["bytes_per_sample_view"] == 10 * 2 + 10 * 2 + 4
    assert report["full_cache_bytes"] == 1_281_167 * 10 * 44
    assert report["built_rows"] == round(1_281_167 * 0.004)
    assert report["built_bytes"] == report["built_rows"] * 10 * 44
    for key in (
        "random_read_sample_views_per_s",
        "sequential_read_sample_views_per_s",
        "cold_random_read_sample_views_per_s",
        "build_sample_views_per_s",
    ):
        assert report[key] > 0, key
    assert report["goal_met"] == (report["random_read_sample_views_per_s"] >= 30_000)
    assert "extrapolated" in (tmp_path / "cache_scale.md").read_text()
