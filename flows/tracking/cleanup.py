"""Cleaning up after killed processes: runs a SIGKILL left RUNNING (no handler can catch it)
are ended KILLED by the next pipeline run on the same machine, from the owner tags every run
carries (runs.py)."""

from __future__ import annotations

import os

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from components.cores import alive
from flows.tracking.common import HOST, OWNER_HOST, OWNER_PID


class OrphanRuns:
    def __init__(self, client: MlflowClient) -> None:
        self.client = client

    def close(self, experiment_id: str) -> list[str]:
        """End KILLED the RUNNING runs whose process on this machine is gone (a SIGKILL,
        which no handler can catch); returns their ids."""
        orphans = []
        for run in self.client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.{OWNER_HOST} = '{HOST}'",
        ):
            pid = int(run.data.tags.get(OWNER_PID, "0"))
            if pid <= 0 or pid == os.getpid() or alive(pid):
                continue
            self.client.set_tag(
                run.info.run_id,
                "error",
                f"process {pid} on {HOST} ended without closing this run (killed); "
                "closed by a later run",
            )
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            orphans.append(run.info.run_id)
        return orphans
