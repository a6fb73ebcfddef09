import pytest
from mlflow.tracking import MlflowClient

from flows.tracking import Tracker, ui_command


def test_runs_end_finished_failed_or_killed_never_running(mlflow_store: str) -> None:
    tracker = Tracker(mlflow_store)
    experiment = tracker.experiment_id("t")
    assert tracker.experiment_id("t") == experiment  # found, not created twice
    parent = tracker.create_run(experiment, "parent")
    with tracker.running(parent):
        with tracker.child_run(experiment, parent, "ok") as ok:
            tracker.log_params(ok, {f"p{i}": i for i in range(150)})  # more than one batch
            tracker.log_metrics(ok, {"acc": 0.5, "nan": float("nan")}, step=2)
        with pytest.raises(ValueError), tracker.child_run(experiment, parent, "bad") as bad:
            raise ValueError("boom")
        with (
            pytest.raises(KeyboardInterrupt),
            tracker.child_run(experiment, parent, "stopped") as stopped,
        ):
            raise KeyboardInterrupt
    client = MlflowClient(mlflow_store)
    assert client.get_run(parent).info.status == "FINISHED"
    ok_run = client.get_run(ok)
    assert ok_run.info.status == "FINISHED"
    assert len(ok_run.data.params) == 150 and ok_run.data.metrics == {"acc": 0.5}
    assert ok_run.data.tags["mlflow.parentRunId"] == parent
    assert ok_run.info.run_name == "ok"
    bad_run = client.get_run(bad)
    assert bad_run.info.status == "FAILED" and "boom" in bad_run.data.tags["error"]
    assert client.get_run(stopped).info.status == "KILLED"


def test_ui_command_names_the_store() -> None:
    assert (
        ui_command("sqlite:////tmp/x/mlflow.db")
        == "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db"
    )
    assert "http://mlflow:5000" in ui_command("http://mlflow:5000")
