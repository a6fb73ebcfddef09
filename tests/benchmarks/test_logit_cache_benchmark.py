"""The benchmark script runs as users run it (tiny settings here) and writes its report."""

import json
from pathlib import Path

import pytest

from tests.helpers import benchmark


@pytest.mark.slow
def test_logit_cache_benchmark_writes_json_and_markdown(tmp_path: Path) -> None:
    args = [
        "--out",
        str(tmp_path),
        "--set",
        "teacher.model.name=cnn_small",
        "--set",
        "teacher.train.epochs=1",
        "--set",
        "student.train.epochs=1",
        "--seeds",
        "1",
        "--views",
        "2",
        "--views-sweep",
        "1,2",
        "--repeats",
        "1",
    ]
    assert benchmark("logit_cache").main(args) == 0
    report = json.loads((tmp_path / "logit_cache.json").read_text())
    ratios = (
        "build_vs_best_inference_ratio",
        "cached_vs_online_speedup",
        "cached_vs_student_only_ratio",
    )
    assert all(report[key] > 0 for key in ratios)
    assert set(report["test_accuracy"]) == {"cached", "live", "labels"}
    # the best inference is looked for over both runtimes and five batch sizes
    inference = report["inference_sample_views_per_s"]
    assert set(inference) == {"pytorch", "onnxruntime"}
    assert all(len(by_batch) == 5 and min(by_batch.values()) > 0 for by_batch in inference.values())
    best = report["best_inference"]
    assert best["sample_views_per_s"] == max(max(b.values()) for b in inference.values())
    assert report["build_runtime"] == "onnxruntime"  # auto, on the CPU
    # the cache and the live teacher give the student the same targets (up to float16)
    accuracy = report["test_accuracy"]
    assert abs(accuracy["cached"]["mean"] - accuracy["live"]["mean"]) < 0.05
    assert [s["views"] for s in report["views_sweep"]] == [1, 2]
    assert report["views_sweep"][1]["cache_bytes"] == 2 * report["views_sweep"][0]["cache_bytes"]
    markdown = (tmp_path / "logit_cache.md").read_text()
    assert "distilled from live teacher" in markdown and "| 2 |" in markdown
