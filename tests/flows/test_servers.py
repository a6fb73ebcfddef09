"""The team stack run for real: `mlflow server` (basic-auth app, artifacts proxied by the
server) and `prefect server start` (API authentication) on a real PostgreSQL (a throwaway
cluster on a free port, run as a non-root user), with the connection settings, drivers and
auth app that docker-compose.yml uses, read from the same file (mlflow/team-stack.env).
Requests without credentials are refused; kd with wrong ones stops with exit 2 before any
work; with the right ones the pipeline completes, checked through the servers' own clients.
Then a second run hits a full disk: the servers, being their own processes, keep the records.
(MLflow's basic-auth app checks a password hash, ~0.3 s here; the team stack lets it trust a
verified credential for a few minutes, auth_cache_ttl_seconds, as the compose file does.)"""

import base64
import contextlib
import glob
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from flows.cli import main
from flows.servers import free_port, local_prefect_server, server_process
from tests.conftest import TINY_OVERRIDES
from tests.helpers import MODEL, STAGES, artifact_paths

REPO = Path(__file__).resolve().parents[2]
TEAM_STACK = REPO / "mlflow" / "team-stack.env"


def team_stack() -> dict[str, str]:
    """mlflow/team-stack.env, as compose reads an env_file: KEY=VALUE lines, # comments."""
    settings = {}
    for line in TEAM_STACK.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            settings[key.strip()] = value.strip()
    return settings


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    password: str

    def url(self, driver: str, database: str) -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"


def _pg_tool(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        pytest.fail(f"PostgreSQL's {name} is not installed: run `make system-deps` (apt-get)")
    return str(found[-1])


@contextlib.contextmanager
def postgres_cluster(databases: list[str]) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (password authentication), run as
    ``nobody`` when the tests run as root (PostgreSQL refuses root); removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="kd-pg-"))  # outside pytest's root-only tmp dirs
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "nobody", "--"]
        os.chown(root, 65534, 65534)
    root.chmod(0o755)
    db = Postgres(free_port(), "kd", secrets.token_urlsafe(12))
    (root / "pw").write_text(db.password)
    if as_user:
        os.chown(root / "pw", 65534, 65534)
    data = root / "data"
    initdb = [*as_user, _pg_tool("initdb"), "-D", str(data), "-U", db.user]
    initdb += ["--pwfile", str(root / "pw"), "--auth-host=scram-sha-256", "--auth-local=peer"]
    subprocess.run([*initdb, "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    options = f"-p {db.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    ctl = [*as_user, _pg_tool("pg_ctl"), "-D", str(data)]
    subprocess.run([*ctl, "-o", options, "-l", str(root / "pg.log"), "-w", "start"], check=True)
    try:
        env = {**os.environ, "PGPASSWORD": db.password}
        for name in databases:
            subprocess.run(
                [_pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(db.port), "-U", db.user, name],
                env=env,
                check=True,
            )
        yield db
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Credentials:
    mlflow_user: str
    mlflow_password: str
    prefect_auth: str

    def env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_USERNAME": self.mlflow_user,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password,
            "PREFECT_API_AUTH_STRING": self.prefect_auth,
        }


@contextlib.contextmanager
def mlflow_server(
    state: Path, backend: str, settings: dict[str, str], admin: tuple[str, str]
) -> Iterator[str]:
    """`mlflow server` with the team stack's auth app (users in the same database)."""
    port = free_port()
    (state / "artifacts").mkdir(parents=True)
    config = state / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        f"default_permission = {settings['MLFLOW_AUTH_DEFAULT_PERMISSION']}\n"
        f"database_uri = {backend}\n"
        f"admin_username = {admin[0]}\nadmin_password = {admin[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {settings['MLFLOW_AUTH_CACHE_TTL_SECONDS']}\n"
    )
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", settings["MLFLOW_APP_NAME"]]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", backend]
    command += ["--artifacts-destination", str(state / "artifacts"), "--serve-artifacts"]
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": settings["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"],
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    url = f"http://127.0.0.1:{port}"
    with server_process("mlflow server", command, url, state / "server.log", env, 180):
        yield url


def _status(url: str, credentials: str | None = None) -> int:
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(credentials.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
@pytest.mark.e2e
def test_the_team_stack_on_postgresql_with_authentication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = team_stack()
    right = Credentials("kd-admin", secrets.token_urlsafe(12), f"kd:{secrets.token_urlsafe(9)}")
    databases = [settings["MLFLOW_DB_NAME"], settings["PREFECT_DB_NAME"]]
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(postgres_cluster(databases))
        tracking_uri = stack.enter_context(
            mlflow_server(
                tmp_path / "mlflow-server",
                db.url(settings["MLFLOW_DB_DRIVER"], settings["MLFLOW_DB_NAME"]),
                settings,
                (right.mlflow_user, right.mlflow_password),
            )
        )
        prefect_env = {
            "PREFECT_API_DATABASE_CONNECTION_URL": db.url(
                settings["PREFECT_DB_DRIVER"], settings["PREFECT_DB_NAME"]
            ),
            "PREFECT_SERVER_API_AUTH_STRING": right.prefect_auth,
        }
        prefect_api, _ = stack.enter_context(
            local_prefect_server(
                tmp_path / "prefect", tmp_path / "prefect-server.log", env=prefect_env
            )
        )

        # nobody gets in without credentials, or with wrong ones
        search = f"{tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search) == 401
        assert _status(search, f"{right.mlflow_user}:wrong") == 401
        assert _status(search, f"{right.mlflow_user}:{right.mlflow_password}") == 200
        assert _status(f"{prefect_api}/admin/version") == 401
        assert _status(f"{prefect_api}/admin/version", "kd:wrong") == 401
        assert _status(f"{prefect_api}/admin/version", right.prefect_auth) == 200

        base_env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PREFECT_API_URL": prefect_api,
        }
        client_dir = tmp_path / "client"  # nothing may land here but the work dir
        client_dir.mkdir()
        overrides = [*TINY_OVERRIDES, f"work_dir={client_dir / 'work'}"]
        command = [sys.executable, "-m", "flows.cli", "run"]
        command += [a for o in overrides for a in ("--set", o)]

        # wrong credentials: a clear kd message, exit 2, before any work (kd called in this
        # process, as the command line calls it: the check reads the same variables)
        for wrong, names in (
            ({**right.env(), "MLFLOW_TRACKING_PASSWORD": "wrong"}, "MLFLOW_TRACKING_PASSWORD"),
            ({**right.env(), "PREFECT_API_AUTH_STRING": "kd:wrong"}, "PREFECT_API_AUTH_STRING"),
        ):
            with monkeypatch.context() as env:
                for name, value in {**base_env, **wrong}.items():
                    env.setenv(name, value)
                env.chdir(client_dir)
                capsys.readouterr()
                assert main(command[3:]) == 2
            stderr = capsys.readouterr().err
            last = stderr.strip().splitlines()[-1]
            assert "refused the credentials" in last and names in last, last
            assert "Traceback" not in stderr
            assert not (client_dir / "work" / "teacher").exists()

        env = {**base_env, **right.env()}
        done = subprocess.run(command, cwd=client_dir, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"({tracking_uri})" in done.stdout

        for name, value in right.env().items():  # this process's clients log in the same way
            monkeypatch.setenv(name, value)
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
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
        assert list((tmp_path / "mlflow-server" / "artifacts").rglob("model.pt"))
        assert not (client_dir / "mlruns").exists() and not (client_dir / "mlflow.db").exists()
        version = client.get_model_version_by_alias(MODEL, "champion")
        assert version.run_id == children["handoff"].info.run_id

        auth = {PREFECT_API_URL: prefect_api, PREFECT_API_AUTH_STRING: right.prefect_auth}
        with temporary_settings(auth), get_client(sync_client=True) as p:
            flow_run = p.read_flow_run(parent.data.tags["prefect_flow_run_id"])
            assert flow_run.state is not None and flow_run.state.is_completed()
            task_runs = {t.name: t for t in p.read_task_runs()}
        assert set(STAGES) <= set(task_runs)
        assert all(task_runs[name].state.is_completed() for name in STAGES)

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
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("kd: the disk is full") and "File too large" in last
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
