"""Several processes on one machine, launched the torchrun way.

``launch`` runs a function in ``nproc`` processes through torch.distributed's elastic launcher
(what ``torchrun --standalone --nproc-per-node N`` uses): a rendezvous on localhost, and in
every process the variables RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. A
worker that needs collectives calls ``join_process_group`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

# What the launched processes import before they are forked (Linux): they start from a fork
# server that imported these once, instead of each importing torch and the recipes anew
# (about 2 s of start-up per process, for every stage). No CUDA is touched before the fork.
PRELOAD = ["torch", "components.recipes", "components.logit_cache"]

# The environment this module was imported with: in a process forked from the fork server,
# the server's, from when it started (see _with_launcher_env).
_ENV_AT_IMPORT = dict(os.environ)


def launch(function: Callable[..., Any], nproc: int, *args: Any) -> dict[int, Any]:
    """``function(*args)`` in ``nproc`` new processes; returns each rank's return value.

    The function must be importable (module level) and its arguments picklable. A failure
    in any process raises here, with that rank's error. Each process sees this process's
    environment as it is now, plus the launcher's variables.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    start_method = "spawn"
    if "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload(PRELOAD)  # no effect once the server runs
        start_method = "forkserver"
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"kd-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method=start_method,
    )
    return elastic_launch(config, _with_launcher_env)(dict(os.environ), function, *args)


def _with_launcher_env(
    launcher_env: dict[str, str], function: Callable[..., Any], *args: Any
) -> Any:
    """In a launched process: the launching process's environment as it was at the launch
    (a forked process has the fork server's, from when the server started), with the
    variables the elastic launcher set for this process (RANK, WORLD_SIZE, ...) on top."""
    per_process = {k: v for k, v in os.environ.items() if _ENV_AT_IMPORT.get(k) != v}
    os.environ.clear()
    os.environ.update({**launcher_env, **per_process})
    return function(*args)


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def worker_device(device_type: str) -> torch.device:
    """This process's device: its own GPU by local rank, or the CPU with its share of cores."""
    _, world = rank_and_world()
    if device_type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    # Each process gets its share of the cores instead of all of them fighting for all.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return torch.device("cpu")


def join_process_group(device: torch.device) -> None:
    """Join the launch's process group: NCCL between GPUs, gloo on CPUs."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
