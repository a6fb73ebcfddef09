"""The teacher-sources benchmark runs as users run it (a small torchvision teacher here)."""

import json
from pathlib import Path

import pytest

from tests.helpers import benchmark


@pytest.mark.slow
def test_teacher_sources_benchmark_writes_its_ratios(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--teacher", "squeezenet1_1", "--size", "64"]
    args += ["--train-images", "128", "--set", "student.model.name=cnn_tiny"]
    assert benchmark("teacher_sources").main(args) == 0
    report = json.loads((tmp_path / "teacher_sources.json").read_text())
    assert report["onnx_vs_torch_cache_build_ratio"] > 0
    assert report["cached_vs_online_speedup_large_teacher"] > 0
    # the two runtimes gave the cache the same logits
    assert report["max_abs_logit_difference_onnx_vs_torch"] < 1e-2
    assert report["settings"]["teacher_input"]["image_size"] == [64, 64]
    assert "cached_vs_online_speedup_large_teacher" in (tmp_path / "teacher_sources.md").read_text()
