"""The same pipeline against real servers over HTTP: an `mlflow server` process (SQLite backend,
artifacts proxied by the server) and a `prefect server start` process, both on 127.0.0.1, both
stopped at the end whatever happens. Checked through their own clients."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.schedule import free_port, local_prefect_server, server_process
from tests.conftest import TINY_OVERRIDES
from tests.flows.test_pipeline import STAGES, artifact_paths


@contextlib.contextmanager
def mlflow_server(state: Path, timeout_s: float = 120) -> Iterator[str]:
    port = free_port()
    (state / "artifacts").mkdir(parents=True)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}"]
    command += ["--artifacts-destination", str(state / "artifacts"), "--serve-artifacts"]
    url = f"http://127.0.0.1:{port}"
    log = state / "server.log"
    with server_process("mlflow server", command, url, log, dict(os.environ), timeout_s):
        yield url


def test_pipeline_runs_against_real_mlflow_and_prefect_servers(tmp_path: Path) -> None:
    with (
        mlflow_server(tmp_path / "mlflow-server") as tracking_uri,
        local_prefect_server(tmp_path / "prefect-server.log") as prefect_api,
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
        version = client.get_model_version_by_alias("kd-student", "champion")
        assert version.run_id == children["handoff"].info.run_id

        # Prefect: the flow run and its tasks are recorded on the server
        with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as p:
            flow_run = p.read_flow_run(parent.data.tags["prefect_flow_run_id"])
            assert flow_run.state is not None and flow_run.state.is_completed()
            task_names = {t.name.rsplit("-", 1)[0] for t in p.read_task_runs()}
        assert {"train-teacher", "cache-teacher-logits", "export-onnx", "promote"} <= task_names
