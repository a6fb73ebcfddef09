"""Faults injected into real `kd run` processes: SIGKILL mid-training (nothing it started
survives it; the rerun resumes after the last finished epoch and ends with an uninterrupted
run's weights), Ctrl-C as a terminal sends it (to the whole process group: kd stops within
10 s, every MLflow run ends KILLED, every Prefect run in a terminal state, its server
stopped), an overlapping second run on the same work dir (refused, naming the first),
SIGKILL during distillation and export (nothing partial under a final name)."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import onnx
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.checkpoint import load_checkpoint
from components.config import load_config
from components.data import load_dataset
from components.recipes import fit, teacher_recipe
from components.training import load_training_state
from flows.cli import main
from flows.servers import work_dir_prefect
from tests.conftest import TINY_OVERRIDES
from tests.flows.conftest import Store
from tests.helpers import flow_run_log, kd_command, one, pipeline_runs, process_env, run_args

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EPOCHS = 2  # killed after the first, resumed for the last
LONGER_TEACHER = f"teacher.train.epochs={EPOCHS}"


def _start(command: list[str], tracking_uri: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            command, env=process_env(tracking_uri), stdout=out, stderr=out, start_new_session=True
        )


def _start_as_from_a_terminal(
    command: list[str], tracking_uri: str, log: Path, work: Path, prefect_database: Path
) -> subprocess.Popen:
    """``kd`` as a shell starts a foreground job: SIGINT at its default (a process started by
    a test inherits it ignored), its own process group, and no PREFECT_API_URL, so that kd
    runs the work dir's own Prefect server. That server starts on a copy of
    ``prefect_database``, migrated and without runs, as a work dir's second kd run finds it:
    the migration of a fresh database (4 s) is not what these tests are about."""
    (work / "prefect").mkdir(parents=True)
    shutil.copyfile(prefect_database, work / "prefect" / "prefect.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    env.pop("PREFECT_API_URL", None)
    with open(log, "w") as out:
        return subprocess.Popen(
            ["env", "--default-signal=INT", *command],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def _prefect_states(work: Path) -> set[str]:
    """The state of every flow and task run in the work dir's own Prefect database."""
    with sqlite3.connect(work / "prefect" / "prefect.db") as db:
        rows = db.execute(
            "SELECT state_type FROM flow_run UNION ALL SELECT state_type FROM task_run"
        )
        return {state for (state,) in rows}


def _wait_for(
    appears: Callable[[], bool], process: subprocess.Popen, timeout_s: float = 300
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if appears():
            return True
        time.sleep(0.02)
    return False


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


def test_sigkill_during_teacher_training_resumes_from_the_last_epoch(
    prefect_server: Path, mlflow_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    work = tmp_path / "work"
    log = tmp_path / "killed.log"
    # kd runs its own Prefect server here: the kill must take that down too
    command = kd_command(work, LONGER_TEACHER)
    process = _start_as_from_a_terminal(command, mlflow_store, log, work, prefect_server)
    killed_after = 0

    def an_epoch_saved() -> bool:
        nonlocal killed_after
        states = list((work / "teacher").glob("*/train_state.pt"))
        if states:
            killed_after = load_training_state(states[0])["epoch"]
        return killed_after >= 1

    assert _wait_for(an_epoch_saved, process), log.read_text()[-3000:]
    started = psutil.Process(process.pid).children(recursive=True)
    server = json.loads((work / "prefect" / "server.json").read_text())["pid"]
    assert server in {child.pid for child in started}
    os.kill(process.pid, signal.SIGKILL)  # kill -9 of kd alone, as a user would
    process.wait()
    assert 1 <= killed_after < EPOCHS, log.read_text()[-3000:]
    assert not list((work / "teacher").glob("*/model.pt"))  # no half a teacher
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"still running 10 s after kd was killed: {alive}"
    # the next kd on this work dir starts its server again and ends what the kill left Running
    assert "RUNNING" in _prefect_states(work)
    with temporary_settings(restore_defaults={PREFECT_API_URL}), work_dir_prefect(work):
        assert not {"RUNNING", "PENDING"} & _prefect_states(work), _prefect_states(work)
        # rerunning the same command (here in this process, on that server) resumes
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


@pytest.mark.parametrize("during", ["teacher", "logit-cache"])
def test_ctrl_c_from_a_terminal_stops_kd_and_ends_every_run(
    during: str,
    prefect_server: Path,
    mlflow_store: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work, log = tmp_path / "work", tmp_path / "run.log"
    overrides = ["teacher.train.epochs=30"]  # still training when the signal comes
    if during == "teacher":
        appears = lambda: any((work / "teacher").glob("*/train_state.pt"))  # noqa: E731
    else:
        # many small chunks, so that the build is caught in the middle
        overrides += ["teacher.train.epochs=1", "cache.views=8", "cache.chunk_rows=32"]
        appears = lambda: any(  # noqa: E731
            journal.stat().st_size > 0 for journal in work.glob("logit-cache/**/chunks.jsonl")
        )
    command = kd_command(work, *overrides)
    process = _start_as_from_a_terminal(command, mlflow_store, log, work, prefect_server)
    assert _wait_for(appears, process), log.read_text()[-3000:]
    server = json.loads((work / "prefect" / "server.json").read_text())["pid"]

    if during == "teacher":
        # a second run on the same work dir (say a scheduled one) is refused, naming the first
        # (called in this process, another than the first's, as the command line calls it)
        capsys.readouterr()
        assert main(run_args(work)) == 2
        refused = capsys.readouterr().err
        assert "is in use by kd run --set" in refused, refused[-2000:]
        assert f"(pid {process.pid} " in refused
        assert process.poll() is None  # the first one is untouched

    os.killpg(process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    interrupted = time.monotonic()
    process.wait(timeout=60)
    assert time.monotonic() - interrupted < 10
    assert process.returncode == 130, log.read_text()[-3000:]
    assert "kd: interrupted" in log.read_text()
    assert "Connection refused" not in log.read_text()
    ((parent, children),) = pipeline_runs(MlflowClient(mlflow_store))
    assert parent.info.status == "KILLED"
    assert children[during].info.status == "KILLED"
    assert {r.info.status for r in children.values()} <= {"FINISHED", "KILLED"}
    # Prefect's record of the run ended too, and kd stopped the server it started
    states = _prefect_states(work)
    assert "CRASHED" in states or "CANCELLED" in states
    assert states <= {"COMPLETED", "CRASHED", "CANCELLED", "FAILED"}, states
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == "zombie"
    assert not (work / "prefect" / "server.json").exists()


def test_sigkill_leaves_no_partial_file_under_a_final_name(
    warm_store: Store, tmp_path: Path
) -> None:
    # One kd killed while distilling, the next (resuming the distillation) while exporting.
    work = warm_store.work
    command = [sys.executable, "-m", "flows.cli", *warm_store.args("student.train.epochs=2")]
    exports_before = set((work / "onnx-export").iterdir())
    kills = {
        "distillation": lambda: any((work / "student-kd").glob("*/train_state.pt")),
        # the export has begun writing: a folder for the new student's fingerprint
        "onnx-export": lambda: set((work / "onnx-export").iterdir()) != exports_before,
    }
    for stage, appears in kills.items():
        log = tmp_path / f"killed-in-{stage}.log"
        process = _start(command, warm_store.tracking_uri, log)
        assert _kill_when(process, appears, signal.SIGKILL), log.read_text()[-3000:]
        assert process.returncode == -signal.SIGKILL

        # whatever is under a final name is whole: a verified checkpoint, a checked ONNX model
        for checkpoint in work.glob("*/*/model.pt"):
            load_checkpoint(checkpoint)
        for model in work.glob("onnx-export/*/*.onnx"):
            onnx.checker.check_model(str(model), full_check=True)
        assert len(list(work.glob("handoff/*/model.onnx"))) == 1  # the first run's, no new one
        if stage == "distillation":
            assert len(list(work.glob("student-kd/*/model.pt"))) == 1  # the first run's only

    assert main(warm_store.args("student.train.epochs=2")) == 0  # the rerun completes
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


def _loading_pytorch(pid: int) -> None:
    """Returns once the process has mapped PyTorch's C++ library: inside ``import torch``."""
    deadline = time.monotonic() + 60
    while "libtorch" not in Path(f"/proc/{pid}/maps").read_text():
        assert time.monotonic() < deadline, "kd never loaded PyTorch"
        time.sleep(0.005)


@pytest.mark.parametrize("moment", ["loading PyTorch", 0.6, 1.5])
def test_ctrl_c_while_kd_starts_is_one_line_and_exit_130(
    moment: str | float, tmp_path: Path
) -> None:
    # the console script as a shell runs it, interrupted while it imports its libraries (a
    # moment found by what the process has loaded, not by a clock: an interrupt before kd's
    # first line runs, while the interpreter itself starts, ends as Python ends it)
    kd = Path(sys.executable).parent / "kd"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(
        ["env", "--default-signal=INT", str(kd), "run", "--set", f"work_dir={tmp_path / 'w'}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if isinstance(moment, str):
        _loading_pytorch(process.pid)
    else:
        time.sleep(moment)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "kd: interrupted"
