"""``kd serve``: the pipeline as a scheduled Prefect deployment.

Prefect's own machinery does the work: ``Flow.serve`` registers the deployment
``kd-retrain/<name>`` with a cron schedule and runs what the server's scheduler queues.
The schedule needs a server with its scheduler: the one at ``PREFECT_API_URL`` when set,
else a local ``prefect server start`` that lives as long as ``kd serve`` does (the
ephemeral server Prefect starts on its own has no scheduler).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.schedules import Cron, Schedule


class ServerError(RuntimeError):
    """A local server did not come up; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def server_process(
    name: str,
    command: list[str],
    url: str,
    log_path: Path,
    env: dict[str, str],
    timeout_s: float,
) -> Iterator[None]:
    """``command`` as its own process group, ready once ``url``/health answers 200; stopped
    at the end whatever happens, the whole group with it. Output goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ServerError(f"{name} did not start ({log_path}):\n{tail}")
            time.sleep(0.5)
        yield
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def local_prefect_server(log_path: Path, timeout_s: float = 180.0) -> Iterator[str]:
    """A real Prefect server (API, UI, scheduler) on 127.0.0.1 for the block; yields its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with server_process("the local Prefect server", command, url, log_path, env, timeout_s):
        yield url


def cron_schedule(cron: str, timezone: str) -> Schedule:
    """The schedule, or ValueError naming what is wrong with the expression or time zone."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {timezone!r}") from err
    return Cron(cron, timezone=timezone)


def serve_pipeline(
    name: str,
    cron: str,
    timezone: str,
    config_path: Path | None,
    overrides: list[str],
    force: list[str],
) -> None:
    """Register ``kd-retrain/<name>`` on the cron and serve its runs until interrupted."""
    from flows.pipeline import retrain

    retrain.serve(
        name=name,
        schedule=cron_schedule(cron, timezone),
        # Absolute: each scheduled run starts in its own process.
        parameters={
            "config_path": str(config_path.resolve()) if config_path else None,
            "overrides": overrides,
            "force": force,
        },
        tags=["kd-pipeline"],
        description="kd-pipeline retraining on a schedule (kd serve)",
    )
