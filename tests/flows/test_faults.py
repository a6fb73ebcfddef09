"""Faults injected into real `kd run` processes: SIGKILL mid-training (the rerun resumes after
the last finished epoch and ends with an uninterrupted run's weights), Ctrl-C (every MLflow run
ends KILLED), SIGKILL during distillation and export (nothing partial under a final name)."""

import os
import resource
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
from prefect.settings import PREFECT_API_URL

from components.checkpoint import load_checkpoint
from components.training import load_training_state
from tests.conftest import TINY_OVERRIDES
from tests.flows.test_pipeline import pipeline_runs
from tests.flows.test_servers import mlflow_server

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


def _start(work: Path, mlflow_uri: str, log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [*kd_run(work, mlflow_uri), *extra],
            env=env(mlflow_uri),
            stdout=out,
            stderr=out,
            start_new_session=True,
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
def test_ctrl_c_ends_every_open_mlflow_run_killed(mlflow_store: str, tmp_path: Path) -> None:
    work, log = tmp_path / "work", tmp_path / "run.log"
    process = _start(work, mlflow_store, log)
    states = work / "models" / "teacher"
    assert _kill_when(process, lambda: any(states.glob("*/train_state.pt")), signal.SIGINT)
    assert process.returncode == 130, log.read_text()[-3000:]
    assert "kd: interrupted" in log.read_text()
    ((parent, children),) = pipeline_runs(MlflowClient(mlflow_store))
    assert parent.info.status == "KILLED"
    assert children["teacher"].info.status == "KILLED"
    assert {r.info.status for r in children.values()} <= {"FINISHED", "KILLED"}


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("stage", ["distillation", "onnx-export"])
def test_sigkill_leaves_no_partial_file_under_a_final_name(
    stage: str, mlflow_store: str, tmp_path: Path
) -> None:
    work, log = tmp_path / "work", tmp_path / "killed.log"
    process = _start(work, mlflow_store, log, "--set", "student.train.epochs=3")
    if stage == "distillation":
        marker = work / "models" / "student-kd"
        appears = lambda: any(marker.glob("*/train_state.pt"))  # noqa: E731
    else:
        marker = work / "onnx"
        appears = marker.exists  # the export has begun writing
    assert _kill_when(process, appears, signal.SIGKILL), log.read_text()[-3000:]
    assert process.returncode == -signal.SIGKILL

    # whatever is under a final name is whole: a verified checkpoint, a checked ONNX model
    for checkpoint in work.glob("models/*/*/model.pt"):
        load_checkpoint(checkpoint)
    for model in work.glob("onnx/*/*.onnx"):
        onnx.checker.check_model(str(model), full_check=True)
    assert not list(work.glob("handoff/*/model.onnx"))  # no bundle from a killed run
    assert not list(work.glob("models/student-kd/*/model.pt")) or stage == "onnx-export"

    done = subprocess.run(
        [*kd_run(work, mlflow_store), "--set", "student.train.epochs=3"],
        env=env(mlflow_store),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (bundle,) = work.glob("handoff/*/model.onnx")
    onnx.checker.check_model(str(bundle), full_check=True)


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # A write past the limit then fails with EFBIG, as on a full disk, instead of a signal.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.usefixtures("prefect_server")
def test_disk_full_is_a_clear_error_and_earlier_work_is_intact(tmp_path: Path) -> None:
    work = tmp_path / "work"
    # The MLflow server is its own process, not limited: the run's records stay writable.
    with mlflow_server(tmp_path / "mlflow-server") as tracking_uri:
        first = subprocess.run(
            kd_run(work, tracking_uri), env=env(tracking_uri), capture_output=True
        )
        assert first.returncode == 0, first.stderr[-3000:]
        before = {
            p: p.read_bytes()
            for p in work.rglob("*")
            if p.is_file() and "prefect-results" not in p.parts
        }

        # a bigger teacher must be trained and saved: its first training state is > 1 MB
        bigger = [*kd_run(work, tracking_uri), "--set", "teacher.model.name=resnet_small"]
        done = subprocess.run(
            bigger,
            env=env(tracking_uri),
            capture_output=True,
            text=True,
            preexec_fn=_file_size_limit(1 << 20),
        )
        assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
        # the last word is one plain line (Prefect's own log above it shows the task failing)
        assert done.stderr.strip().splitlines()[-1].startswith("kd: the disk is full")
        assert "File too large" in done.stderr.strip().splitlines()[-1]

        # all the first run wrote is intact, byte for byte; nothing new is half-written
        for path, content in before.items():
            assert path.read_bytes() == content, path
        assert not [p for p in work.rglob("*") if p.is_file() and ".tmp-" in p.name]
        client = MlflowClient(tracking_uri)
        runs = client.search_runs([client.get_experiment_by_name("kd-pipeline").experiment_id])
        assert "RUNNING" not in {r.info.status for r in runs}
        assert {r.info.status for r in runs if r.info.run_name == "teacher"} == {
            "FINISHED",
            "FAILED",
        }


@pytest.mark.usefixtures("prefect_server")
def test_a_corrupted_checkpoint_is_never_reused(mlflow_store: str, tmp_path: Path) -> None:
    from flows.cli import main
    from tests.flows.test_pipeline import flow_run_log, tiny_run_args

    work = tmp_path / "work"
    assert main(tiny_run_args(work)) == 0
    (checkpoint,) = (work / "models" / "teacher").glob("*/model.pt")
    good = checkpoint.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    assert main(tiny_run_args(work)) == 0
    _, (parent, _) = pipeline_runs(MlflowClient(mlflow_store))
    logged = flow_run_log(parent)
    assert f"{checkpoint} changed since it was cached (sha256 differs)" in logged
    assert "teacher" not in parent.data.tags["reused_stages"].split(",")
    assert checkpoint.read_bytes() == good  # retrained from its inputs: the same bytes again
