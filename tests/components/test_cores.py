"""The machine's cores shared between kd processes: a registry of the live ones and their
weights, each worker its share; a dead process's entry ignored; nesting restores the weight."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.cores import (
    SHARING,
    apply_fair_threads,
    cores,
    fair_threads,
    live_weights,
    share_cores,
)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KD_PROCESS_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.delenv("KD_THREADS", raising=False)
    monkeypatch.delenv(SHARING, raising=False)
    return tmp_path / "registry"


def _other_kd(registry: Path, weight: int) -> subprocess.Popen:
    """Another process registered with ``weight`` (alive until killed)."""
    code = (
        "import sys, time; from components.cores import share_cores\n"
        f"with share_cores({weight}):\n    print('in', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "in"
    return process


def test_each_worker_gets_its_share_of_the_cores(registry: Path) -> None:
    with share_cores(1):
        assert live_weights() == {os.getpid(): 1}
        assert fair_threads() == cores()  # alone: every core
        other = _other_kd(registry, 1)
        try:
            assert fair_threads() == max(1, cores() // 2)
        finally:
            other.kill()
            other.wait()
        # a killed process leaves its entry behind; it is ignored, and cleared away
        assert (registry / f"{other.pid}.json").is_file()
        assert fair_threads() == cores()
        assert not (registry / f"{other.pid}.json").exists()
    assert not (registry / f"{os.getpid()}.json").exists()


def test_nested_weights_and_a_fixed_count(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with share_cores(1):
        with share_cores(3):
            assert live_weights()[os.getpid()] == 3
            assert fair_threads() == max(1, cores() // 3)
        assert json.loads((registry / f"{os.getpid()}.json").read_text())["weight"] == 1
        monkeypatch.setenv("KD_THREADS", "1")
        assert fair_threads() == 1
        monkeypatch.setenv("KD_THREADS", "two")
        with pytest.raises(ValueError, match="KD_THREADS='two'"):
            fair_threads()


def test_only_registered_processes_change_their_threads(registry: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert apply_fair_threads() is None and torch.get_num_threads() == 1  # not registered
        with share_cores(1):
            assert apply_fair_threads() == cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
