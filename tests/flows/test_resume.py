"""A real `kd run` process killed with SIGKILL mid-training: the rerun of the same command
resumes after the last finished epoch and ends with the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from components.checkpoint import load_checkpoint
from components.training import load_training_state
from tests.conftest import TINY_OVERRIDES
from tests.flows.test_pipeline import pipeline_runs

EPOCHS = 5


def kd_run(work: Path, mlflow_uri: str) -> list[str]:
    overrides = [*TINY_OVERRIDES, f"teacher.train.epochs={EPOCHS}", f"work_dir={work}"]
    return [sys.executable, "-m", "flows.cli", "run", *(a for o in overrides for a in ("--set", o))]


def env(mlflow_uri: str) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }


@pytest.mark.usefixtures("prefect_server")
def test_sigkill_during_teacher_training_resumes_from_the_last_epoch(
    mlflow_store: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            kd_run(work, mlflow_store),
            env=env(mlflow_store),
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    killed_after = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        states = list((work / "models" / "teacher").glob("*/train_state.pt"))
        if states:
            killed_after = load_training_state(states[0])["epoch"]
            if killed_after >= 2:
                os.killpg(process.pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    process.wait()
    assert 2 <= killed_after < EPOCHS, log.read_text()[-3000:]
    assert not list((work / "models" / "teacher").glob("*/model.pt"))  # no half a teacher

    done = subprocess.run(
        kd_run(work, mlflow_store), env=env(mlflow_store), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumed_run = pipeline_runs(MlflowClient(mlflow_store))[-1][1]["teacher"]
    assert int(resumed_run.data.tags["resumed_from_epoch"]) >= killed_after
    # every epoch is in the resumed run's history, once
    steps = [
        m.step
        for m in MlflowClient(mlflow_store).get_metric_history(
            resumed_run.info.run_id, "val_accuracy"
        )
    ]
    assert steps == list(range(1, EPOCHS + 1))
    assert not list((work / "models" / "teacher").glob("*/train_state.pt"))  # superseded

    # the same command never interrupted gives the same teacher, bit for bit
    reference = tmp_path / "reference"
    done = subprocess.run(
        kd_run(reference, mlflow_store), env=env(mlflow_store), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (resumed_file,) = (work / "models" / "teacher").glob("*/model.pt")
    (reference_file,) = (reference / "models" / "teacher").glob("*/model.pt")
    resumed, _ = load_checkpoint(resumed_file)
    uninterrupted, _ = load_checkpoint(reference_file)
    for (name, a), b in zip(
        resumed.state_dict().items(), uninterrupted.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
