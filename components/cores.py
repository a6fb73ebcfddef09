"""Sharing the machine's cores between the kd processes running on it.

Each compute library starts as many threads as there are cores. Two ``kd run``s on one
2-core machine then run four busy threads on two cores, and each takes 3.4 times as long as
alone, where fair sharing would give 2. So every ``kd`` process that computes registers in a
machine-wide registry (a directory of one small file per process, ``KD_PROCESS_REGISTRY``,
by default under the system's temporary directory), with a weight: how many workers it runs
at once (a sweep on the process runner, ``--nproc``). Each worker then uses
``cores * 1 / (sum of the live weights)`` threads, at least one, and asks again at every epoch
and every cache build, so a run that started alone gives up cores when another starts, and
takes them back when it ends. An entry whose process is gone is ignored (a SIGKILL leaves its
file behind).

``KD_THREADS`` fixes the count instead (as ``OMP_NUM_THREADS`` would, for kd's own threads).
Only a registered process and the processes it starts (``KD_SHARE_CORES`` in their
environment) change their thread count; a script that sets its own (the benchmarks) keeps it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SHARING = "KD_SHARE_CORES"


def registry_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "kd-pipeline-processes"
    return Path(os.environ.get("KD_PROCESS_REGISTRY", default))


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (Linux: /proc), to tell it from a later one given the
    same pid; None where the system does not say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def live_weights(directory: Path | None = None) -> dict[int, int]:
    """pid -> weight of every registered kd process still running. The entry of a process
    that is gone (a SIGKILL leaves it) is removed, where this user may."""
    directory = directory or registry_dir()
    found: dict[int, int] = {}
    for entry in directory.glob("*.json") if directory.is_dir() else ():
        try:
            record = json.loads(entry.read_text())
            pid, weight = int(record["pid"]), int(record["weight"])
        except (OSError, ValueError, KeyError):
            continue  # being written, or not ours
        started = record.get("start_ticks")
        if alive(pid) and (started is None or started == _start_ticks(pid)):
            found[pid] = max(1, weight)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return found


def fair_threads(directory: Path | None = None) -> int:
    """Threads for one worker of this process: ``KD_THREADS`` when set, else this machine's
    cores shared by the live weights (one worker alone gets them all)."""
    fixed = os.environ.get("KD_THREADS")
    if fixed:
        if not fixed.isdigit() or int(fixed) < 1:
            raise ValueError(f"KD_THREADS={fixed!r}: give a whole number of threads, at least 1")
        return int(fixed)
    total = sum(live_weights(directory).values()) or 1
    return max(1, cores() // total)


@contextlib.contextmanager
def share_cores(weight: int = 1, directory: Path | None = None) -> Iterator[Path]:
    """This process in the registry for the block, running ``weight`` workers at once. The
    block may be nested (a sweep runs its students in parallel after a teacher alone): the
    inner weight holds inside it, the outer one again after it."""
    directory = directory or registry_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):  # made by another user: theirs to set
        directory.chmod(0o1777)  # any user's kd registers; each removes only its own
    entry = directory / f"{os.getpid()}.json"
    outer = entry.read_text() if entry.is_file() else None
    record = {"pid": os.getpid(), "weight": weight, "start_ticks": _start_ticks(os.getpid())}
    _write(entry, json.dumps({**record, "started": time.time()}))
    before = os.environ.get(SHARING)
    os.environ[SHARING] = "1"  # this process and the ones it starts follow the registry
    try:
        yield entry
    finally:
        if outer is None:
            entry.unlink(missing_ok=True)
        else:
            _write(entry, outer)
        if before is None:
            os.environ.pop(SHARING, None)
        else:
            os.environ[SHARING] = before


def _write(entry: Path, text: str) -> None:
    tmp = entry.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, entry)


def apply_fair_threads() -> int | None:
    """In a registered kd process (or one it started), set PyTorch's thread count to this
    worker's fair share now and return it; elsewhere leave it (None)."""
    if not os.environ.get(SHARING):
        return None
    import torch

    threads = fair_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
