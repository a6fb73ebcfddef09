"""Champion/challenger on real runs: a real Prefect server, a real MLflow registry in SQLite.
The warm store's first run registered version 1, the champion."""

import mlflow.artifacts
import pytest

from flows.cli import main
from tests.flows.conftest import Store
from tests.helpers import pipeline_runs

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

WEAK = "student.train.lr=1e-7"  # one epoch at this rate stays near chance
# Same architecture on both sides: latency is a tie up to noise, which this test is not about.
LATENCY_TIE = "promotion.max_latency_ratio=5"


def test_a_worse_challenger_is_rejected_and_an_equal_one_promoted(
    warm_store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    client = warm_store.client
    assert str(client.get_model_version_by_alias("kd-student", "champion").version) == "1"
    capsys.readouterr()
    assert main(warm_store.args(WEAK, LATENCY_TIE)) == 0  # version 2: worse
    assert "Promotion: kept the champion: accuracy" in capsys.readouterr().out
    assert main(warm_store.args(LATENCY_TIE)) == 0  # version 3: the champion's equal

    assert str(client.get_model_version_by_alias("kd-student", "champion").version) == "3"
    assert str(client.get_model_version_by_alias("kd-student", "challenger").version) == "3"
    first, second, third = (client.get_model_version("kd-student", v) for v in ("1", "2", "3"))
    assert first.tags["promotion.decision"] == "promoted"
    assert "no champion yet" in first.tags["promotion.reason"]
    assert second.tags["promotion.decision"] == "rejected"
    assert second.tags["promotion.champion_version"] == "1"
    assert third.tags["promotion.decision"] == "promoted"
    assert third.tags["promotion.champion_version"] == "1"
    # both sides were scored now, and the champion's record of the challenge sits beside its own
    assert float(second.tags["promotion.champion_accuracy"]) > float(
        second.tags["promotion.challenger_accuracy"]
    )
    assert first.tags["last_challenge.decision"] == "promoted"
    assert first.tags["last_challenge.challenger_version"] == "3"
    assert first.tags["promotion.decision"] == "promoted"  # its own record is kept

    runs = pipeline_runs(client)
    assert [parent.data.tags["promotion.decision"] for parent, _ in runs] == [
        "promoted",
        "rejected",
        "promoted",
    ]
    parent, children = runs[1]
    record = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/promotion.json")
    assert record["promote"] is False and record["champion_version"] == "1"
    assert record["policy"]["max_accuracy_drop"] == 0.002
    assert record["champion"]["accuracy"] == float(second.tags["promotion.champion_accuracy"])
    markdown = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/promotion.md")
    assert "NOT PROMOTED" in markdown and "champion (version 1)" in markdown
    assert children["promotion"].data.metrics["promoted"] == 0.0
    # the champion's accuracy is measured now, equal to what its own export measured
    first_export = runs[0][1]["onnx-export"].data.metrics["onnx_test_accuracy"]
    assert children["promotion"].data.metrics["champion_accuracy"] == first_export
