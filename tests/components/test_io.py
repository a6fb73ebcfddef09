"""The work dir's lock: one pipeline at a time, and a killed holder never leaves it stale."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.io import WorkDirBusy, lock_holder, temporary_env, work_dir_lock

HOLD = (
    "import sys, time; from pathlib import Path; from components.io import work_dir_lock\n"
    "with work_dir_lock(Path(sys.argv[1]), 'kd run --set seed=1'):\n"
    "    print('held', flush=True); time.sleep(120)\n"
)


def _holder(work: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(work)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    return process


def test_a_second_process_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(WorkDirBusy) as refused, work_dir_lock(tmp_path, "kd run"):
            pass
        message = str(refused.value)
        assert f"is in use by kd run --set seed=1 (pid {holder.pid} on " in message
        assert "--set work_dir=DIR" in message
        assert lock_holder(tmp_path) is not None
    finally:
        holder.send_signal(signal.SIGKILL)  # killed, it cannot unlock: the kernel does
        holder.wait()
    assert lock_holder(tmp_path) is None
    with work_dir_lock(tmp_path, "kd run"):
        assert "kd run (pid" in (lock_holder(tmp_path) or "")


def test_a_waiting_process_runs_once_the_holder_ends(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
    with work_dir_lock(tmp_path, "scheduled run", wait=True):
        waited = time.monotonic() - started
        # the kernel frees the lock as the holder dies, a moment before its exit can be read
        # (poll() right away raced on a loaded machine)
        assert holder.wait(timeout=10) is not None and waited >= 0.9


def test_the_lock_is_reentrant_within_one_process(tmp_path: Path) -> None:
    with work_dir_lock(tmp_path, "kd run"):
        with work_dir_lock(tmp_path, "the kd flow run"):
            pass
        assert lock_holder(tmp_path) is not None  # still held by the outer block
    assert lock_holder(tmp_path) is None


def test_temporary_env_sets_removes_and_restores_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_TEST_SET", "before")
    monkeypatch.delenv("KD_TEST_UNSET", raising=False)
    with temporary_env(KD_TEST_SET=None, KD_TEST_UNSET="during"):
        assert "KD_TEST_SET" not in os.environ
        assert os.environ["KD_TEST_UNSET"] == "during"
    assert os.environ["KD_TEST_SET"] == "before"
    assert "KD_TEST_UNSET" not in os.environ
    with pytest.raises(RuntimeError), temporary_env(KD_TEST_SET="during"):
        raise RuntimeError  # restored on the way out of an error too
    assert os.environ["KD_TEST_SET"] == "before"
