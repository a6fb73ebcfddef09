"""The pipeline's report and `kd compare`, read back from the session's two real tiny runs."""

import csv
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.cli import main
from flows.pipeline import PIPELINE
from tests.flows.conftest import SessionRuns
from tests.helpers import artifact_paths, pipeline_runs

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# The variants of a run, in pipeline order, as the stages declare them.
VARIANTS = [variant.name.format(run=stage.name) for stage in PIPELINE for variant in stage.variants]


def test_compare_reads_two_real_runs_back_from_mlflow(
    session_runs: SessionRuns,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = session_runs.store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    client = store.client
    (old, old_children), (new, new_children) = pipeline_runs(client)
    assert VARIANTS == [
        "teacher",
        "student-baseline",
        "student-kd",
        "student-kd-onnx",
        "student-kd-onnx-int8",
    ]

    out_dir = tmp_path / "compare"
    assert main(["compare", "--last", "2", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    with open(out_dir / "comparison.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # newest run first, five variants each
    assert [r["run_id"] for r in rows] == [new.info.run_id] * 5 + [old.info.run_id] * 5
    assert [r["variant"] for r in rows] == VARIANTS * 2
    assert printed.count(f"({new.info.run_id[:8]})") == 5
    assert (out_dir / "accuracy_vs_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert (out_dir / "comparison.md").read_text() in printed

    # every figure is the one MLflow holds for that run
    for parent, children in ((old, old_children), (new, new_children)):
        mine = {r["variant"]: r for r in rows if r["run_id"] == parent.info.run_id}
        teacher = children["teacher"]
        assert float(mine["teacher"]["test_accuracy"]) == teacher.data.metrics["test_accuracy"]
        assert mine["teacher"]["parameters"] == teacher.data.params["model.parameters"]
        assert float(mine["teacher"]["speedup_vs_teacher"]) == 1.0
        export = children["onnx-export"].data.metrics
        onnx_row = mine["student-kd-onnx"]
        assert float(onnx_row["test_accuracy"]) == export["onnx_test_accuracy"]
        assert int(onnx_row["size_bytes"]) == export["model_bytes"]
        assert int(mine["student-kd-onnx-int8"]["size_bytes"]) == export["int8_model_bytes"]
        bench = children["benchmark"].data.metrics
        threads = max(int(k.split(".threads")[1].split(".")[0]) for k in bench if ".threads" in k)
        p50 = bench[f"student-kd-onnx.onnxruntime.threads{threads}.batch1.p50_ms"]
        assert float(onnx_row["p50_ms_batch1"]) == p50
        # like for like: the ONNX student against the teacher in ONNX Runtime, same threads
        teacher_p50 = bench[f"teacher.onnxruntime.threads{threads}.batch1.p50_ms"]
        assert float(onnx_row["speedup_vs_teacher"]) == pytest.approx(teacher_p50 / p50)
        assert onnx_row["threads"] == str(threads)
        torch_p50 = bench[f"student-kd.pytorch.threads{threads}.batch1.p50_ms"]
        torch_teacher = bench[f"teacher.pytorch.threads{threads}.batch1.p50_ms"]
        assert float(mine["student-kd"]["speedup_vs_teacher"]) == pytest.approx(
            torch_teacher / torch_p50
        )
        assert float(onnx_row["accuracy_retained"]) == pytest.approx(
            export["onnx_test_accuracy"] / teacher.data.metrics["test_accuracy"]
        )

    # chosen by id; bad requests are the user's to fix
    assert main(["compare", old.info.run_id, "--out", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "comparison.csv").read_text().count(old.info.run_id) == 5
    assert main(["compare", "0" * 32]) == 2
    assert main(["compare", old_children["teacher"].info.run_id]) == 2  # a child, not a pipeline
    assert main(["compare", old.info.run_id, "--last", "2"]) == 2
    assert main(["compare", "--experiment", "no-such-experiment"]) == 2

    # each pipeline run logged its own report: curves, confusion matrix, the comparison
    logged = artifact_paths(client, new.info.run_id)
    assert {"figures/training_curves.png", "figures/confusion_matrix.png"} <= logged
    assert {"comparison/comparison.md", "comparison/comparison.csv"} <= logged
    assert "comparison/accuracy_vs_latency.png" in logged
    report_md = (store.work / "report" / new.info.run_id / "comparison.md").read_text()
    assert new.info.run_id[:8] in report_md and old.info.run_id[:8] in report_md
    # and published it as a Prefect table artifact
    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["kd-comparison"]))
        )
    assert artifacts and {a.type for a in artifacts} == {"table"}
    assert any(new.info.run_id in str(a.data) for a in artifacts)
