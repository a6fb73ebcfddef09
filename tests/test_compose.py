"""The server set-up in mlflow/ (no Docker engine here to start it): what can be checked
without one is checked: wiring, secrets only from the uncommitted .env, localhost-only ports."""

import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "mlflow" / "docker-compose.yml"


def test_compose_wires_mlflow_prefect_and_the_worker() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"postgres", "minio", "minio-bucket", "mlflow", "prefect-server", "worker"} <= set(
        services
    )
    # the drivers, database names and auth app come from the file the servers test reads
    settings = dict(
        line.split("=", 1)
        for line in (COMPOSE.parent / "team-stack.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["MLFLOW_DB_DRIVER"] == "postgresql+psycopg2"
    assert settings["PREFECT_DB_DRIVER"] == "postgresql+asyncpg"
    for name in ("mlflow", "prefect-server"):
        assert services[name]["env_file"] == "team-stack.env"
    mlflow_command = services["mlflow"]["command"]
    assert "$${MLFLOW_DB_DRIVER}://" in mlflow_command and "s3://" in mlflow_command
    assert "--app-name $${MLFLOW_APP_NAME}" in mlflow_command
    assert "--serve-artifacts" in mlflow_command
    assert "auth_cache_ttl_seconds = %s" in mlflow_command
    assert "$${MLFLOW_AUTH_CACHE_TTL_SECONDS}" in mlflow_command
    prefect_command = services["prefect-server"]["command"]
    assert "PREFECT_API_DATABASE_CONNECTION_URL=$${PREFECT_DB_DRIVER}://" in prefect_command
    # both APIs want credentials; the worker has them
    assert "PREFECT_SERVER_API_AUTH_STRING" in services["prefect-server"]["environment"]
    worker_env = services["worker"]["environment"]
    assert {
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "PREFECT_API_AUTH_STRING",
    } <= set(worker_env)
    assert "mlflow[auth]==" in (COMPOSE.parent / "Dockerfile.mlflow").read_text()
    worker = services["worker"]
    assert worker["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (COMPOSE.parent / worker["build"]["context"] / "Dockerfile").is_file()
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["command"][0] == "serve"
    for name in ("mlflow", "prefect-server"):
        assert worker["depends_on"][name]["condition"] == "service_healthy"
        assert services[name]["healthcheck"]["test"]
    assert services["mlflow"]["depends_on"]["minio-bucket"]["condition"] == (
        "service_completed_successfully"
    )
    assert (COMPOSE.parent / services["mlflow"]["build"]["dockerfile"]).is_file()


def test_ports_listen_on_localhost_only() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    published = [port for s in services.values() for port in s.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)


def test_secrets_come_only_from_the_uncommitted_env_file() -> None:
    text = COMPOSE.read_text()
    example = (REPO / "mlflow" / ".env.example").read_text()
    defined = {line.split("=", 1)[0] for line in example.splitlines() if "=" in line}
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", text))  # not $${...}: the container's shell
    assert used <= defined, used - defined
    for secret in (
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "MLFLOW_ADMIN_PASSWORD",
        "PREFECT_API_AUTH_STRING",
    ):
        assert f"${{{secret}:?" in text  # compose refuses to start without it
    spec = yaml.safe_load(text)
    environments = [spec["x-postgres-env"]] + [
        s.get("environment", {}) for s in spec["services"].values()
    ]
    for environment in environments:
        for key, value in environment.items():
            if any(word in key for word in ("PASSWORD", "SECRET", "ACCESS_KEY")):
                assert str(value).startswith("${"), key  # never a literal value
    ignored = subprocess.run(
        ["git", "check-ignore", "mlflow/.env"], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.returncode == 0


def test_mlflow_directory_is_not_a_python_package() -> None:
    assert not list((REPO / "mlflow").rglob("*.py"))
