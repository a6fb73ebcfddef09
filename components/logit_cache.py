"""The teacher's logits on disk: the only way the teacher's knowledge reaches a student.

What is stored. For each training sample (row i = ``splits["train"][i]``) and each of K views
(view v = the augmentation replayed from (seed, sample index, v), see augment.py), the
teacher's logits on exactly that input. The student later trains on the same views, so
caching never changes what it learns ("consistent teaching", Beyer et al. 2022; FKD, Shen &
Xing 2022), and the cost of the teacher is paid once, not every epoch.

Storage (``storage``):
- ``full``: ``logits.npy`` (rows, K, classes) in float16 (default) or float32.
- ``topk``: ``values.npy`` (rows, K, k) float16, ``indices.npy`` (rows, K, k) in the smallest
  unsigned type that holds the class count, and ``rest.npy`` (rows, K): the mean of the
  other logits. Read back, every class outside the top k gets that mean logit, so at any
  temperature the top-k classes keep their exact relative odds and the leftover probability
  mass is spread evenly over the other classes.

Safety. The cache key hashes everything that produced the content (teacher weights sha256,
dataset fingerprint, view policy and seed, K, storage format). A build writes chunks of rows
into preallocated memory maps under ``.<key>.partial/``, appending each finished chunk's
sha256 to a journal, so a killed build resumes from the last complete chunk. The finished
directory is renamed to ``<key>/`` in one step, under an exclusive file lock, so two
processes building the same key leave one valid cache. Opening verifies every chunk's
checksum against the manifest; a corrupt or truncated cache is refused with the file named,
and ``build_logit_cache`` rebuilds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, assert_never

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from components.augment import render_views
from components.config import AugmentConfig, CacheConfig
from components.data import Dataset, DatasetInfo
from components.distributed import launch, rank_and_world, worker_device
from components.io import fsync_path, sha256_json
from components.teachers import InputSpec, TeacherView
from components.training import place, show_progress

FORMAT_VERSION = 3  # 3: the teacher's input recipe and class map in the spec


class CacheError(ValueError):
    """A cache that is missing, corrupt or does not match; the message names the file."""


@dataclass(frozen=True)
class CacheSpec:
    """Everything the cache's content depends on; its hash is the cache key."""

    teacher_sha256: str
    dataset_fingerprint: str
    augment: dict[str, Any]
    view_seed: int
    views: int
    storage: Literal["full", "topk"]
    top_k: int | None
    dtype: str
    # The teacher's own input recipe (None: the data's) and, per dataset class, the teacher
    # output that scores it (None: the same classes in the same order); see teachers.py.
    teacher_input: dict[str, Any] | None = None
    class_index: list[int] | None = None

    @classmethod
    def create(
        cls,
        teacher_sha256: str,
        dataset_fingerprint: str,
        augment: AugmentConfig,
        view_seed: int,
        config: CacheConfig,
        teacher_input: dict[str, Any] | None = None,
        class_index: list[int] | None = None,
    ) -> CacheSpec:
        return cls(
            teacher_sha256=teacher_sha256,
            dataset_fingerprint=dataset_fingerprint,
            augment=augment.model_dump(mode="json"),
            view_seed=view_seed,
            views=config.views,
            storage=config.storage,
            top_k=config.top_k if config.storage == "topk" else None,
            dtype=config.dtype,
            teacher_input=teacher_input,
            class_index=class_index,
        )

    @property
    def key(self) -> str:
        return sha256_json({"format": FORMAT_VERSION, **asdict(self)})[:16]


@dataclass(frozen=True)
class CacheInfo:
    path: str
    key: str
    rows: int
    views: int
    num_classes: int
    storage: str
    bytes_per_sample_view: int
    build_seconds: float
    cache_hit: bool


def index_dtype(num_classes: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise CacheError(f"{num_classes} classes do not fit a uint32 index")


def _layout(
    spec: CacheSpec, rows: int, classes: int
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Array name -> (shape, dtype) for this spec."""
    values = np.dtype(spec.dtype)
    match spec.storage:
        case "full":
            return {"logits": ((rows, spec.views, classes), values)}
        case "topk":
            k = spec.top_k or 0
            return {
                "values": ((rows, spec.views, k), values),
                "indices": ((rows, spec.views, k), index_dtype(classes)),
                "rest": ((rows, spec.views), values),
            }
        case _:
            assert_never(spec.storage)


def encode(logits: torch.Tensor, spec: CacheSpec, classes: int) -> dict[str, np.ndarray]:
    """Float32 logits (..., classes) -> the stored arrays of one chunk."""
    values = np.dtype(spec.dtype)
    match spec.storage:
        case "full":
            return {"logits": logits.numpy().astype(values)}
        case "topk":
            k = spec.top_k or 0
            top = logits.topk(k, dim=-1)
            rest = (logits.sum(-1) - top.values.sum(-1)) / (classes - k)
            return {
                "values": top.values.numpy().astype(values),
                "indices": top.indices.numpy().astype(index_dtype(classes)),
                "rest": rest.numpy().astype(values),
            }
        case _:
            assert_never(spec.storage)


def _chunk_digest(arrays: Mapping[str, np.ndarray], start: int, stop: int) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name][start:stop]).data)
    return digest.hexdigest()


class LogitCache:
    """A verified cache, read through memory maps: random rows, any view."""

    def __init__(self, directory: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.directory = directory
        self.manifest = manifest
        self.arrays = arrays
        self.rows, self.views, self.num_classes = (
            manifest["rows"],
            manifest["views"],
            manifest["num_classes"],
        )

    def logits(self, rows: np.ndarray, views: np.ndarray) -> torch.Tensor:
        """Float32 logits (len(rows), classes) of the given rows at the given views."""
        if "logits" in self.arrays:
            return torch.from_numpy(self.arrays["logits"][rows, views].astype(np.float32))
        values = torch.from_numpy(self.arrays["values"][rows, views].astype(np.float32))
        indices = torch.from_numpy(self.arrays["indices"][rows, views].astype(np.int64))
        rest = torch.from_numpy(self.arrays["rest"][rows, views].astype(np.float32))
        full = rest[:, None].expand(len(rows), self.num_classes).clone()
        return full.scatter_(1, indices, values)


def open_logit_cache(
    directory: Path, expected_key: str | None = None, verify: bool = True
) -> LogitCache:
    """Open a finished cache; refuse one whose key, shapes or checksums do not match."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"logit cache manifest {manifest_path}: unreadable ({err})") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"logit cache {directory}: format {manifest.get('format_version')!r}")
    spec = CacheSpec(**manifest["spec"])
    if spec.key != manifest["key"] or (expected_key is not None and spec.key != expected_key):
        raise CacheError(
            f"logit cache {directory}: key {manifest['key']} does not match the request "
            f"({expected_key or spec.key})"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in _layout(spec, manifest["rows"], manifest["num_classes"]).items():
        path = directory / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CacheError(f"logit cache file {path}: missing or truncated ({err})") from err
        if array.shape != shape or array.dtype != dtype:
            raise CacheError(
                f"logit cache file {path}: {array.dtype}{list(array.shape)} does not match "
                f"manifest {dtype}{list(shape)}"
            )
        arrays[name] = array
    if verify:
        for i, (start, stop, digest) in enumerate(manifest["chunks"]):
            if _chunk_digest(arrays, start, stop) != digest:
                names = ", ".join(f"{n}.npy" for n in sorted(arrays))
                raise CacheError(
                    f"logit cache {directory} ({names}): chunk {i} (rows {start}-{stop}) fails "
                    "its checksum: corrupt"
                )
    return LogitCache(directory, manifest, arrays)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _info(cache: LogitCache, cache_hit: bool) -> CacheInfo:
    m = cache.manifest
    return CacheInfo(
        path=str(cache.directory),
        key=m["key"],
        rows=m["rows"],
        views=m["views"],
        num_classes=m["num_classes"],
        storage=m["spec"]["storage"],
        bytes_per_sample_view=m["bytes_per_sample_view"],
        build_seconds=m["build_seconds"],
        cache_hit=cache_hit,
    )


def build_logit_cache(
    teacher: nn.Module,
    spec: CacheSpec,
    dataset: Dataset,
    cache_root: Path,
    chunk_rows: int,
    device: torch.device,
    on_chunk: Callable[[int, int], None] | None = None,
    rebuild: bool = False,
    workers: int = 1,
) -> CacheInfo:
    """Return the cache for ``spec``: reused when a verified one exists, else built.

    ``on_chunk(done, total)`` is called after each chunk is durably written (in-process
    builds). ``rebuild`` discards a finished or interrupted cache of this key and computes
    every chunk again. ``workers`` > 1 splits the chunks over that many launched processes
    (components.distributed); the bytes are the same for any count.

    ``teacher``: a ``TeacherView`` (input recipe and class map of a teacher from elsewhere,
    matching the spec's), or a plain module fed the data's own recipe.
    """
    teacher = _as_view(teacher, spec, dataset.info)
    classes = dataset.info.num_classes
    if spec.storage == "topk" and not (spec.top_k or 0) < classes:
        raise CacheError(f"cache.top_k ({spec.top_k}) must be below the class count ({classes})")
    if spec.dataset_fingerprint != dataset.info.fingerprint:
        raise CacheError("cache spec names another dataset than the one given")
    final = cache_root / spec.key
    partial = cache_root / f".{spec.key}.partial"
    with _exclusive(cache_root / ".locks" / f"{spec.key}.lock"):
        if rebuild:
            shutil.rmtree(final, ignore_errors=True)
            shutil.rmtree(partial, ignore_errors=True)
        if final.exists():
            try:
                return _info(open_logit_cache(final, expected_key=spec.key), cache_hit=True)
            except CacheError:
                shutil.rmtree(final)  # corrupt: rebuilt below
        train_indices = dataset.splits["train"]
        layout = _layout(spec, len(train_indices), classes)
        arrays, done_chunks = _open_partial(partial, spec, layout)
        bounds = [
            (s, min(s + chunk_rows, len(train_indices)))
            for s in range(0, len(train_indices), chunk_rows)
        ]
        finished = {entry[0] for entry in done_chunks}
        todo = [b for b in bounds if b[0] not in finished]
        if workers > 1 and len(todo) > 1:
            del arrays  # the workers open their own maps of the same files
            launch(
                _cache_worker,
                workers,
                teacher.cpu(),
                spec,
                dataset.info.path,
                str(partial),
                todo,
                device.type,
            )
            arrays, done_chunks = _open_partial(partial, spec, layout)
        else:
            teacher = place(teacher, device).eval()
            bar = tqdm(
                total=len(bounds),
                initial=len(done_chunks),
                desc="logit cache",
                unit="chunk",
                disable=not show_progress(),
            )
            for start, stop in todo:
                done_chunks.append(
                    _build_chunk(teacher, spec, dataset, arrays, partial, start, stop, device)
                )
                bar.update()
                if on_chunk is not None:
                    on_chunk(len(done_chunks), len(bounds))
            bar.close()
        del arrays
        done_chunks.sort(key=lambda entry: entry[0])
        if [tuple(entry[:2]) for entry in done_chunks] != bounds:
            raise CacheError(f"logit cache build {partial}: chunks missing after the build")
        manifest = {
            "format_version": FORMAT_VERSION,
            "key": spec.key,
            "spec": asdict(spec),
            "rows": len(train_indices),
            "row_meaning": "row i = training-split sample i (splits['train'][i]); axis 1 = view",
            "train_indices_sha256": sha256_json(train_indices.tolist()),
            "views": spec.views,
            "num_classes": classes,
            "arrays": {n: {"shape": list(s), "dtype": d.name} for n, (s, d) in layout.items()},
            "bytes_per_sample_view": sum(
                d.itemsize * int(np.prod(s[2:], dtype=np.int64)) for s, d in layout.values()
            ),
            "chunks": [c[:3] for c in done_chunks],
            "build_seconds": sum(c[3] for c in done_chunks),
            "created_unix": time.time(),
        }
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        fsync_path(partial / "manifest.json")
        (partial / "chunks.jsonl").unlink()
        os.replace(partial, final)
        fsync_path(cache_root)
        return _info(open_logit_cache(final, expected_key=spec.key), cache_hit=False)


def _as_view(teacher: nn.Module, spec: CacheSpec, info: DatasetInfo) -> TeacherView:
    if not isinstance(teacher, TeacherView):
        teacher = TeacherView(teacher, InputSpec.of_data(info), None)
    wanted = spec.teacher_input or InputSpec.of_data(info).as_dict()
    if teacher.spec.as_dict() != wanted or teacher.class_index != spec.class_index:
        raise CacheError(
            f"the teacher's input recipe {teacher.spec.as_dict()} and class map "
            f"{teacher.class_index} are not the cache spec's ({wanted}, {spec.class_index})"
        )
    return teacher


def _build_chunk(
    teacher: nn.Module,
    spec: CacheSpec,
    dataset: Dataset,
    arrays: dict[str, np.memmap],
    partial: Path,
    start: int,
    stop: int,
    device: torch.device,
) -> list[Any]:
    """Compute rows [start, stop), flush them, then journal their checksum (durably)."""
    started = time.perf_counter()
    logits = teacher_view_logits(teacher, dataset, np.arange(start, stop), spec, device)
    for name, chunk in encode(logits, spec, dataset.info.num_classes).items():
        arrays[name][start:stop] = chunk
    for array in arrays.values():
        array.flush()
    entry = [start, stop, _chunk_digest(arrays, start, stop), time.perf_counter() - started]
    # One short line per append: O_APPEND keeps lines from several workers whole.
    with open(partial / "chunks.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return entry


def _cache_worker(
    teacher: nn.Module,
    spec: CacheSpec,
    dataset_path: str,
    partial: str,
    todo: list[tuple[int, int]],
    device_type: str,
) -> int:
    """One launched process: chunks rank, rank + world, ... of ``todo``, written into the
    shared memory maps; no collectives needed, the chunks are independent."""
    from components.data import load_dataset

    rank, world = rank_and_world()
    device = worker_device(device_type)
    teacher = place(teacher, device).eval()
    dataset = load_dataset(dataset_path)
    arrays = {p.stem: np.load(p, mmap_mode="r+") for p in Path(partial).glob("*.npy")}
    mine = todo[rank::world]
    for start, stop in mine:
        _build_chunk(teacher, spec, dataset, arrays, Path(partial), start, stop, device)
    return len(mine)


def _open_partial(
    partial: Path, spec: CacheSpec, layout: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> tuple[dict[str, np.memmap], list[list[Any]]]:
    """Memory maps of an interrupted build of this spec and its finished chunks, or new ones."""
    spec_path, journal = partial / "spec.json", partial / "chunks.jsonl"
    if spec_path.is_file() and json.loads(spec_path.read_text()) == asdict(spec):
        try:
            arrays = {n: np.load(partial / f"{n}.npy", mmap_mode="r+") for n in layout}
            done: list[list[Any]] = []
            lines = journal.read_text().splitlines() if journal.is_file() else []
            for line in lines:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line torn by a kill: its chunk is simply computed again
                if _chunk_digest(arrays, entry[0], entry[1]) != entry[2]:
                    break
                done.append(entry)
            return arrays, done
        except (OSError, ValueError, json.JSONDecodeError):
            pass
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    spec_path.write_text(json.dumps(asdict(spec)))
    arrays = {}
    for name, (shape, dtype) in layout.items():
        path = partial / f"{name}.npy"
        arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        # Reserve the blocks now: a full disk fails here with ENOSPC, not later as a SIGBUS
        # when a page of the (otherwise sparse) map is written.
        with open(path, "rb+") as handle:
            os.posix_fallocate(handle.fileno(), 0, path.stat().st_size)
    return arrays, []


@torch.no_grad()
def teacher_view_logits(
    teacher: nn.Module,
    dataset: Dataset,
    rows: np.ndarray,
    spec: CacheSpec,
    device: torch.device,
) -> torch.Tensor:
    """Float32 logits (len(rows), K, classes) of the teacher (a ``TeacherView``) on each
    replayed view."""
    train_indices = dataset.splits["train"]
    policy = AugmentConfig(**spec.augment)

    def fetch(r: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(dataset.images[train_indices[r]])).to(device)

    per_view = []
    for view in range(spec.views):
        views = render_views(fetch, rows, train_indices, view, policy, spec.view_seed)
        per_view.append(teacher(views.images).float().cpu())
    return torch.stack(per_view, dim=1)
