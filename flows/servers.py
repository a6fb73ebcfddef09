"""The local servers kd starts itself, and the Prefect server of a work dir.

Without ``PREFECT_API_URL``, Prefect would start a temporary server of its own: a child in
kd's process group (so a terminal's Ctrl-C kills it before kd can report the interrupt,
and the flow and task runs stay Running for good), orphaned by a SIGKILL of kd, keeping
its history in ``~/.prefect``, shared by every project on the machine. kd starts its own
instead, with three differences:

- in a session of its own, so the terminal's SIGINT reaches kd alone, and kd ends its runs
  (Crashed, with the reason) before it stops the server;
- with a parent-death signal, so a SIGKILL of kd takes the server down with it;
- with ``PREFECT_HOME`` under the work dir (``work_dir/prefect/``), so each work dir keeps
  its own history: ``PREFECT_HOME=kd-work/prefect prefect server start`` opens it later.

Every kd process on one work dir uses one such server: a second one finds the first's in
``work_dir/prefect/server.json`` and uses it (one SQLite writer, no 'database is locked').
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from components.io import temporary_env, write_json


class ServerError(RuntimeError):
    """A local server did not come up; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# Run before the server's own code, in the new process: ask the kernel for SIGTERM when the
# parent (kd) dies, then become the server. The signal survives exec; the ppid check closes
# the window in which kd died before the request was made.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "  # 1: PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(1); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def guarded(command: list[str]) -> list[str]:
    """``command`` started so that it dies with this process (Linux; elsewhere unchanged)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


@contextlib.contextmanager
def server_process(
    name: str,
    command: list[str],
    url: str,
    log_path: Path,
    env: dict[str, str],
    timeout_s: float,
) -> Iterator[int]:
    """``command`` as its own session, ready once ``url``/health answers 200; stopped at the
    end whatever happens, the whole group with it, and killed by the kernel if this process
    dies first. Yields its pid; output goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            guarded(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ServerError(f"{name} did not start ({log_path}):\n{tail}")
            time.sleep(0.25)
        yield process.pid
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def local_prefect_server(
    home: Path, log_path: Path, timeout_s: float = 180.0, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """A real Prefect server (API, UI, scheduler) on 127.0.0.1 keeping its state in ``home``
    (its database too, unless ``env`` names another: PREFECT_API_DATABASE_CONNECTION_URL);
    yields its API URL and pid."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(env or {}),
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with server_process("the local Prefect server", command, url, log_path, env, timeout_s) as pid:
        yield url, pid


def configured_prefect_api() -> str | None:
    """The Prefect server the environment or the active profile names, if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextlib.contextmanager
def work_dir_prefect(work_dir: Path) -> Iterator[str]:
    """The Prefect API this work dir's runs report to, for the block.

    The configured server when there is one; else the work dir's own local server: the one
    another kd process already runs for it, or one started here and stopped at the end.
    ``PREFECT_API_URL`` is set in the environment for the block (scheduled runs and other
    processes read it there) and in Prefect's settings.
    """
    configured = configured_prefect_api()
    if configured:
        yield configured
        return
    home = work_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        with _flock(home / "server.lock"):  # one starter at a time per work dir
            url = _running_server(home)
            if url is not None:
                stack.enter_context(_api_url(url))
            else:
                url, pid = stack.enter_context(local_prefect_server(home, home / "server.log"))
                record = home / "server.json"
                write_json(record, {"url": url, "pid": pid, "kd_pid": os.getpid()})
                stack.callback(record.unlink, missing_ok=True)
                stack.enter_context(_api_url(url))
                # Before the server stops, and while the URL is still set: what the client
                # still queues would otherwise be retried against a closed port at exit.
                stack.callback(drain_prefect_clients)
                crashed = end_orphaned_runs()
                if crashed:
                    print(
                        f"kd: {crashed} Prefect run(s) left Running by a killed kd process: "
                        "set Crashed",
                        file=sys.stderr,
                    )
        yield url


@contextlib.contextmanager
def _api_url(url: str) -> Iterator[None]:
    """``url`` as the Prefect API: in Prefect's settings, and in the environment for the
    processes started meanwhile (scheduled runs, torch.distributed workers)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_env(PREFECT_API_URL=url), temporary_settings({PREFECT_API_URL: url}):
        yield


def drain_prefect_clients() -> None:
    """Send the logs and events this process has queued for the Prefect API (as Prefect's
    own test harness does before it stops its server)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        pending: Any
        try:
            pending = APILogWorker.instance().drain()
            if inspect.isawaitable(pending):
                await pending
        except RuntimeError:
            pass  # no log was ever sent: the worker never started
        pending = EventsWorker.drain_all()
        if inspect.isawaitable(pending):
            await pending

    run_coro_as_sync(drain())


def _running_server(home: Path) -> str | None:
    try:
        record = json.loads((home / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return record["url"] if healthy(record["url"]) else None


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def end_orphaned_runs() -> int:
    """Set Crashed every flow and task run still Running or Pending on a server that was just
    started: whatever ran them died with the previous server (a SIGKILL of kd)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    open_states = [StateType.RUNNING, StateType.PENDING]
    message = "the kd process running this was killed (found when the next run started)"
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=open_states))
            )
        )
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=open_states))
            )
        )
        for flow_run in flow_runs:
            client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)
        for task_run in task_runs:
            client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
    return len(flow_runs) + len(task_runs)
