"""The same pipeline against real servers over HTTP: an `mlflow server` process (SQLite backend,
artifacts proxied by the server) and a `prefect server start` process, both on 127.0.0.1, both
stopped at the end whatever happens. Checked through their own clients. Then a second run on
the same servers hits a full disk: the servers, being their own processes, keep the records."""

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.servers import free_port, local_prefect_server, server_process
from tests.conftest import TINY_OVERRIDES
from tests.helpers import MODEL, STAGES, artifact_paths


@contextlib.contextmanager
def mlflow_server(
    state: Path, timeout_s: float = 120, database: Path | None = None
) -> Iterator[str]:
    """``database``: an MLflow SQLite database to start from (a fresh one migrates for ~2 s)."""
    port = free_port()
    (state / "artifacts").mkdir(parents=True)
    if database is not None:
        shutil.copyfile(database, state / "mlflow.db")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(state / "artifacts"), "--serve-artifacts"]
    url = f"http://127.0.0.1:{port}"
    log = state / "server.log"
    with server_process("mlflow server", command, url, log, dict(os.environ), timeout_s):
        yield url


@pytest.mark.slow
@pytest.mark.e2e
def test_pipeline_runs_against_real_servers_and_a_full_disk_keeps_their_records(
    tmp_path: Path, empty_mlflow_db: Path
) -> None:
    with (
        mlflow_server(tmp_path / "mlflow-server", database=empty_mlflow_db) as tracking_uri,
        local_prefect_server(tmp_path / "prefect", tmp_path / "prefect-server.log") as (
            prefect_api,
            _,
        ),
    ):
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PREFECT_API_URL": prefect_api}
        client_dir = tmp_path / "client"  # nothing may land here but the work dir
        client_dir.mkdir()
        overrides = [*TINY_OVERRIDES, f"work_dir={client_dir / 'work'}"]
        command = [sys.executable, "-m", "flows.cli", "run"]
        command += [a for o in overrides for a in ("--set", o)]
        done = subprocess.run(command, cwd=client_dir, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"({tracking_uri})" in done.stdout

        # MLflow: the runs, metrics, artifacts and the registered model are on the server
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name("kd-pipeline")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = {r.info.run_name: r for r in runs if r.info.run_id != parent.info.run_id}
        assert sorted(children) == sorted(STAGES)
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert children["teacher"].data.metrics["test_accuracy"] > 0
        assert "checkpoint/model.pt" in artifact_paths(client, children["teacher"].info.run_id)
        assert "figures/training_curves.png" in artifact_paths(client, parent.info.run_id)
        # artifacts went through the server's proxy into its own store, not the client's disk
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
        assert list((tmp_path / "mlflow-server" / "artifacts").rglob("model.pt"))
        assert not (client_dir / "mlruns").exists() and not (client_dir / "mlflow.db").exists()
        version = client.get_model_version_by_alias(MODEL, "champion")
        assert version.run_id == children["handoff"].info.run_id

        # Prefect: the flow run and its tasks are recorded on the server
        with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as p:
            flow_run = p.read_flow_run(parent.data.tags["prefect_flow_run_id"])
            assert flow_run.state is not None and flow_run.state.is_completed()
            task_runs = {t.name: t for t in p.read_task_runs()}
        # the Prefect task runs carry the stages' names, as the MLflow runs do
        assert set(STAGES) <= set(task_runs)
        assert all(task_runs[name].state.is_completed() for name in STAGES)

        # A full disk (a 64 KiB file-size limit on the `kd` process): another teacher must be
        # trained, and its first training state (~150 KB) is over the limit.
        before = {
            p: p.read_bytes()
            for p in (client_dir / "work").rglob("*")
            if p.is_file() and "prefect-results" not in p.parts
        }
        done = subprocess.run(
            [*command, "--set", "teacher.train.lr=0.002"],
            cwd=client_dir,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=file_size_limit(64 << 10),
        )
        assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
        # the last word is one plain line (Prefect's own log above it shows the task failing)
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("kd: the disk is full") and "File too large" in last
        # all the first run wrote is intact, byte for byte; nothing new is half-written
        for path, content in before.items():
            assert path.read_bytes() == content, path
        assert not [p for p in client_dir.rglob("*") if p.is_file() and ".tmp-" in p.name]
        runs = client.search_runs([experiment.experiment_id])
        assert "RUNNING" not in {r.info.status for r in runs}
        teachers = {r.info.status for r in runs if r.info.run_name == "teacher"}
        assert teachers == {"FINISHED", "FAILED"}


def file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # A write past the limit then fails with EFBIG, as on a full disk, instead of a signal.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
