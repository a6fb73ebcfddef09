"""Runs a killed process left RUNNING are ended KILLED by the next run on the machine; runs of
live processes are left alone."""

import subprocess
import sys

from mlflow.tracking import MlflowClient

from flows.tracking import Tracker
from flows.tracking.runs import OWNER_PID


def test_only_the_runs_of_dead_processes_are_closed(mlflow_store: str) -> None:
    tracker = Tracker(mlflow_store)
    experiment = tracker.runs.experiment_id("t")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    orphan = tracker.runs.create_run(experiment, "orphan", tags={OWNER_PID: dead})
    mine = tracker.runs.create_run(experiment, "mine")  # this process: alive
    assert tracker.orphans.close(experiment) == [orphan]
    client = MlflowClient(mlflow_store)
    assert client.get_run(orphan).info.status == "KILLED"
    assert f"process {dead}" in client.get_run(orphan).data.tags["error"]
    assert client.get_run(mine).info.status == "RUNNING"
    assert tracker.orphans.close(experiment) == []  # closed once
