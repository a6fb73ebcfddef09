"""Faults injected into real `kd run` processes: SIGKILL mid-training (the rerun resumes after
the last finished epoch and ends with an uninterrupted run's weights), Ctrl-C (every MLflow run
ends KILLED), SIGKILL during distillation and export (nothing partial under a final name)."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch
from mlflow.tracking import MlflowClient

from components.checkpoint import load_checkpoint
from components.config import load_config
from components.data import load_dataset
from components.recipes import fit, teacher_recipe
from components.training import load_training_state
from flows.cli import main
from tests.conftest import TINY_OVERRIDES
from tests.flows.conftest import Store
from tests.helpers import flow_run_log, kd_command, one, pipeline_runs, process_env, run_args

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EPOCHS = 5
LONGER_TEACHER = f"teacher.train.epochs={EPOCHS}"


def _start(command: list[str], tracking_uri: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            command, env=process_env(tracking_uri), stdout=out, stderr=out, start_new_session=True
        )


def _kill_when(process: subprocess.Popen, appears: Callable[[], bool], sig: int) -> bool:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if appears():
            os.killpg(process.pid, sig)
            process.wait()
            return True
        time.sleep(0.02)
    process.wait()
    return False


@pytest.mark.usefixtures("prefect_server")
def test_sigkill_during_teacher_training_resumes_from_the_last_epoch(
    mlflow_store: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    log = tmp_path / "killed.log"
    process = _start(kd_command(work, LONGER_TEACHER), mlflow_store, log)
    killed_after = 0

    def two_epochs_saved() -> bool:
        nonlocal killed_after
        states = list((work / "teacher").glob("*/train_state.pt"))
        if states:
            killed_after = load_training_state(states[0])["epoch"]
        return killed_after >= 2

    assert _kill_when(process, two_epochs_saved, signal.SIGKILL), log.read_text()[-3000:]
    assert 2 <= killed_after < EPOCHS, log.read_text()[-3000:]
    assert not list((work / "teacher").glob("*/model.pt"))  # no half a teacher

    # rerunning the same command (here in this process) resumes
    assert main(run_args(work, LONGER_TEACHER)) == 0
    runs = pipeline_runs(MlflowClient(mlflow_store))
    resumed_run = runs[-1][1]["teacher"]
    # the killed process could not close its runs; the rerun found them and ended them KILLED
    killed_parent, killed_children = runs[0]
    assert killed_parent.info.status == "KILLED" and "killed" in killed_parent.data.tags["error"]
    assert killed_children["teacher"].info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for _, c in runs for r in c.values()}
    assert int(resumed_run.data.tags["resumed_from_epoch"]) >= killed_after
    # every epoch is in the resumed run's history, once
    steps = [
        m.step
        for m in MlflowClient(mlflow_store).get_metric_history(
            resumed_run.info.run_id, "val_accuracy"
        )
    ]
    assert steps == list(range(1, EPOCHS + 1))
    assert not list((work / "teacher").glob("*/train_state.pt"))  # superseded

    # the same recipe never interrupted gives the same teacher, bit for bit
    config = load_config(None, [*TINY_OVERRIDES, LONGER_TEACHER])
    dataset = load_dataset(one((work / "prepare-data").iterdir()))
    uninterrupted, _ = fit(teacher_recipe(config), dataset, torch.device("cpu"))
    resumed, _ = load_checkpoint(one((work / "teacher").glob("*/model.pt")))
    for (name, a), b in zip(
        resumed.state_dict().items(), uninterrupted.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.usefixtures("prefect_server")
def test_ctrl_c_ends_every_open_mlflow_run_killed(mlflow_store: str, tmp_path: Path) -> None:
    work, log = tmp_path / "work", tmp_path / "run.log"
    process = _start(kd_command(work, LONGER_TEACHER), mlflow_store, log)
    states = work / "teacher"
    assert _kill_when(process, lambda: any(states.glob("*/train_state.pt")), signal.SIGINT)
    assert process.returncode == 130, log.read_text()[-3000:]
    assert "kd: interrupted" in log.read_text()
    ((parent, children),) = pipeline_runs(MlflowClient(mlflow_store))
    assert parent.info.status == "KILLED"
    assert children["teacher"].info.status == "KILLED"
    assert {r.info.status for r in children.values()} <= {"FINISHED", "KILLED"}


@pytest.mark.parametrize("stage", ["distillation", "onnx-export"])
def test_sigkill_leaves_no_partial_file_under_a_final_name(
    stage: str, warm_store: Store, tmp_path: Path
) -> None:
    work, log = warm_store.work, tmp_path / "killed.log"
    command = [sys.executable, "-m", "flows.cli", *warm_store.args("student.train.epochs=3")]
    exports_before = set((work / "onnx-export").iterdir())
    if stage == "distillation":
        appears = lambda: any((work / "student-kd").glob("*/train_state.pt"))  # noqa: E731
    else:
        # the export has begun writing: a folder for the new student's fingerprint
        appears = lambda: set((work / "onnx-export").iterdir()) != exports_before  # noqa: E731
    process = _start(command, warm_store.tracking_uri, log)
    assert _kill_when(process, appears, signal.SIGKILL), log.read_text()[-3000:]
    assert process.returncode == -signal.SIGKILL

    # whatever is under a final name is whole: a verified checkpoint, a checked ONNX model
    for checkpoint in work.glob("*/*/model.pt"):
        load_checkpoint(checkpoint)
    for model in work.glob("onnx-export/*/*.onnx"):
        onnx.checker.check_model(str(model), full_check=True)
    assert len(list(work.glob("handoff/*/model.onnx"))) == 1  # the first run's, no new bundle
    if stage == "distillation":
        assert len(list(work.glob("student-kd/*/model.pt"))) == 1  # the first run's only

    assert main(warm_store.args("student.train.epochs=3")) == 0  # the rerun completes
    for bundle in work.glob("handoff/*/model.onnx"):
        onnx.checker.check_model(str(bundle), full_check=True)
    assert len(list(work.glob("handoff/*/model.onnx"))) == 2


def test_a_corrupted_checkpoint_is_never_reused(warm_store: Store) -> None:
    checkpoint = one((warm_store.work / "teacher").glob("*/model.pt"))
    good = checkpoint.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    assert main(warm_store.args()) == 0
    _, (parent, _) = pipeline_runs(warm_store.client)
    logged = flow_run_log(parent)
    assert f"{checkpoint} changed since it was cached (sha256 differs)" in logged
    assert "teacher" not in parent.data.tags["reused_stages"].split(",")
    assert checkpoint.read_bytes() == good  # retrained from its inputs: the same bytes again
