"""Champion/challenger on real runs: a real Prefect server, a real MLflow registry in SQLite."""

from pathlib import Path

import mlflow.artifacts
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from tests.flows.test_pipeline import pipeline_runs, tiny_run_args

WEAK = "student.train.lr=1e-7"  # one epoch at this rate stays near chance
# Same architecture on both sides: latency is a tie up to noise, which this test is not about.
LATENCY_TIE = "promotion.max_latency_ratio=5"


@pytest.mark.usefixtures("prefect_server")
def test_better_challenger_is_promoted_and_a_worse_one_is_not(
    mlflow_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    assert main(tiny_run_args(work, WEAK, LATENCY_TIE)) == 0  # version 1: the first model
    assert main(tiny_run_args(work, LATENCY_TIE)) == 0  # version 2: better
    capsys.readouterr()
    assert main(tiny_run_args(work, WEAK, LATENCY_TIE)) == 0  # version 3: worse
    assert "Promotion: kept the champion: accuracy" in capsys.readouterr().out

    client = MlflowClient(mlflow_store)
    assert client.get_model_version_by_alias("kd-student", "champion").version == 2
    assert client.get_model_version_by_alias("kd-student", "challenger").version == 3
    first, second, third = (client.get_model_version("kd-student", v) for v in ("1", "2", "3"))
    assert first.tags["promotion.decision"] == "promoted"
    assert "no champion yet" in first.tags["promotion.reason"]
    assert second.tags["promotion.decision"] == "promoted"
    assert second.tags["promotion.champion_version"] == "1"
    assert third.tags["promotion.decision"] == "rejected"
    assert third.tags["promotion.champion_version"] == "2"
    # both sides were scored now, and the champion's record of the challenge sits beside its own
    assert float(third.tags["promotion.champion_accuracy"]) > float(
        third.tags["promotion.challenger_accuracy"]
    )
    assert second.tags["last_challenge.decision"] == "rejected"
    assert second.tags["last_challenge.challenger_version"] == "3"
    assert second.tags["promotion.decision"] == "promoted"  # its own record is kept

    runs = pipeline_runs(client)
    promoted = [parent.data.tags["promotion.decision"] for parent, _ in runs]
    assert promoted == ["promoted", "promoted", "rejected"]
    parent, children = runs[2]
    record = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/promotion.json")
    assert record["promote"] is False and record["champion_version"] == "2"
    assert record["policy"]["max_accuracy_drop"] == 0.002
    assert record["champion"]["accuracy"] == float(third.tags["promotion.champion_accuracy"])
    markdown = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/promotion.md")
    assert "NOT PROMOTED" in markdown and "champion (version 2)" in markdown
    assert children["promotion"].data.metrics["promoted"] == 0.0
    # the champion's accuracy is measured now, equal to what its own export measured
    second_export = runs[1][1]["onnx-export"].data.metrics["onnx_test_accuracy"]
    assert children["promotion"].data.metrics["champion_accuracy"] == second_export
