"""Files appear whole or not at all: write under a temporary name, flush, rename."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One sha256 over several files: of the first alone when it is alone (a single file's
    hash is its own), else over each file's name and hash, in the order given."""
    if len(paths) == 1:
        return sha256_file(paths[0])
    return sha256_json([[path.name, sha256_file(path)] for path in paths])


def sha256_json(payload: Any) -> str:
    """Fingerprint of a JSON-able value, independent of key order."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file or directory entry to disk (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is fsynced and renamed onto ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def temporary_env(**values: str | None) -> Iterator[None]:
    """Environment variables set (a value) or removed (None) for the block, each restored
    exactly afterwards: set again if it was set, removed if it was not."""

    def apply(settings: dict[str, str | None]) -> None:
        for name, value in settings.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    saved = {name: os.environ.get(name) for name in values}
    try:
        apply(values)
        yield
    finally:
        apply(saved)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, payload: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


class WorkDirError(ValueError):
    """The work directory cannot be created or written."""


def check_writable(directory: Path) -> Path:
    """The resolved directory, if it can be written or created, without creating anything:
    it, or its nearest existing parent, is a writable directory (the pre-flight check)."""
    directory = directory.expanduser().resolve()
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a directory" if not existing.is_dir() else "is not writable"
        raise WorkDirError(f"work_dir {directory}: not writable ({existing} {what})")
    return directory


def ensure_writable(directory: Path) -> Path:
    """The resolved directory, created if needed; fails before any work if it is unwritable."""
    directory = directory.expanduser().resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise WorkDirError(f"work_dir {directory}: not writable ({err.strerror or err})") from err
    return directory


def write_bytes(path: Path, data: bytes) -> Path:
    """Atomic, with a plain write: a full disk raises OSError (ENOSPC) naming the problem."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _git(where: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, check=True, cwd=where
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.cache
def code_version() -> dict[str, str]:
    """Which code this process runs: git commit, branch and whether the tree had changes not
    committed (``unknown`` outside a git checkout), and the versions of kd-pipeline and of
    the packages whose behaviour the results depend on."""
    from importlib import metadata

    where = Path(__file__).resolve().parent
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    info = {
        "git_commit": _git(where, "rev-parse", "HEAD") or "unknown",
        "git_branch": _git(where, "rev-parse", "--abbrev-ref", "HEAD") or "unknown",
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
        "source": str(where.parent),
    }
    for package in ("kd-pipeline", "torch", "onnx", "onnxruntime", "prefect", "mlflow"):
        try:
            info[f"{package}_version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[f"{package}_version"] = "not installed"
    return info


def code_description() -> str:
    """The code version in one line, for model cards: commit, branch, uncommitted changes."""
    code = code_version()
    dirty = {"true": ", with uncommitted changes", "false": ""}.get(code["git_dirty"], "")
    return (
        f"git {code['git_commit']} ({code['git_branch']}{dirty}), kd {code['kd-pipeline_version']}"
    )


def git_commit(directory: Path | None = None) -> str:
    """The commit of the checkout the code runs from (``unknown`` outside a git checkout)."""
    return _git(directory or Path(__file__).resolve().parent, "rev-parse", "HEAD") or "unknown"


class WorkDirBusy(WorkDirError):
    """Another live process holds the work directory's lock."""


_HELD: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, depth) held by this process


@contextlib.contextmanager
def work_dir_lock(directory: Path, what: str, wait: bool = False) -> Iterator[None]:
    """Hold ``directory``'s lock for the block: one pipeline at a time per work dir.

    An advisory ``flock`` on ``directory/.kd-lock``, released by the kernel when the holder
    dies (even by SIGKILL), so a killed run never leaves a stale lock. The holder writes
    who it is into the file; a second process either waits for it (``wait``) or gets
    :class:`WorkDirBusy` naming it. Re-entrant within one process: the CLI takes it before
    the flow starts and the flow takes it again.
    """
    import fcntl
    import socket
    import time

    path = ensure_writable(directory) / ".kd-lock"
    if path in _HELD:
        fd, depth = _HELD[path]
        _HELD[path] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD[path]
            _HELD[path] = (fd, depth - 1)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            if not wait:
                raise WorkDirBusy(
                    f"work_dir {directory} is in use by {holder}; wait for it to finish, or "
                    "give this run another work_dir (--set work_dir=DIR)"
                ) from None
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder ends
        owner = {
            "what": what,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        _HELD[path] = (fd, 1)
        try:
            yield
        finally:
            del _HELD[path]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def lock_holder(directory: Path) -> str | None:
    """Who holds ``directory``'s lock now (``None`` when nobody does)."""
    import fcntl

    path = directory / ".kd-lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _lock_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        owner = {}
    if not owner:
        return "another process (it has not said who it is yet)"
    return f"{owner['what']} (pid {owner['pid']} on {owner['host']}, started {owner['started']})"
