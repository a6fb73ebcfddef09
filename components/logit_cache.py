"""The teacher's logits on disk: the only way the teacher's knowledge reaches a student.

What is stored. For each training sample (row i = ``splits["train"][i]``) and each of K views
(view v = the augmentation replayed from (seed, sample id, v), see augment.py; the id is the
image's content hash, ``Dataset.train_ids``), the teacher's logits on exactly that input.
The student later trains on the same views, so caching never changes what it learns
("consistent teaching", Beyer et al. 2022; FKD, Shen & Xing 2022), and the cost of the
teacher is paid once, not every epoch.

Two views. With a strong policy in the view config (``augment.strong``), every view v of a
sample also has a strong view: the strong augmentation of weak view v, replayed from (seed,
sample, v) the same way (augment.py). The cache then holds the teacher on both, the strong
arrays under the same names prefixed ``strong_``, for the two-view methods (MLKD).

Storage (``storage``):
- ``full``: ``logits.npy`` (rows, K, classes) in float16 (default) or float32.
- ``topk``: ``values.npy`` (rows, K, k), ``indices.npy`` (rows, K, k) in the smallest
  unsigned type that holds the class count, and ``rest_lse.npy`` (rows, K, R) float32: for
  each of the R readings (temperature T, z-scored or not) the distillation method makes of
  the teacher (components/methods/), the log-sum-exp of the other classes' logits / T;
  with a z-scored reading also ``moments.npy`` (rows, K, 2), each logit vector's mean and
  standard deviation. Read back at a reading's T, the top-k classes get their exact
  probabilities and the other classes share the exact leftover mass, evenly: a mean of the
  leftover logits instead (Jensen: (C - k) exp(mean / T) <= sum exp(z_j / T)) would
  understate that mass. The readings are part of the key: another temperature is another
  cache. Values that do not fit the storage dtype (float16 beyond 65504) refuse the chunk.

Data that grows. A build copies every sample an earlier data version's cache of the same
making already holds (matched by content id, ``_plan_reuse``) and runs the teacher only on the
new ones; the result is the bytes a build from scratch gives (a sample's logits do not depend
on what it is batched with: the same bytes for any ``chunk_rows`` and ``batch_size``, tested).

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
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, assert_never

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from components.augment import render_strong_views, render_views
from components.config import AugmentConfig, CacheConfig, PipelineConfig
from components.cores import apply_fair_threads
from components.data import Dataset, DatasetInfo
from components.devices import place, resolve_device, show_progress, torch_threads
from components.distributed import launch, rank_and_world, worker_device
from components.io import fsync_path, sha256_json
from components.losses import STANDARDIZE_EPS, TeacherLogits, standardize
from components.methods import cache_readings
from components.teachers import InputSpec, OnnxModule, TeacherFormat, TeacherView, onnx_twin

FORMAT_VERSION = 4  # 4: exact top-k (leftover log-sum-exp per reading), strong views
Runtime = Literal["pytorch", "onnxruntime"]


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
    # Top-k storage: the (temperature, z-scored) readings it can rebuild exactly.
    readings: list[tuple[float, bool]] | None = None
    # What runs the teacher (resolve_runtime): ONNX Runtime's float32 sums differ from
    # PyTorch's in the last bits, so the runtime is part of what produced the bytes.
    runtime: Runtime = "pytorch"

    @property
    def strong(self) -> bool:
        """Whether the cache also holds the teacher on each view's strong view."""
        return self.augment.get("strong") is not None

    @property
    def kinds(self) -> tuple[str, ...]:
        """The array-name prefixes: "" for the weak views, "strong_" for the strong ones."""
        return ("", "strong_") if self.strong else ("",)

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
        readings: list[tuple[float, bool]] | tuple[tuple[float, bool], ...] | None = None,
        runtime: Runtime = "pytorch",
    ) -> CacheSpec:
        """``readings``: for top-k storage, where the loss reads the teacher
        (``components.methods.cache_readings``); ignored for full storage, which reads anywhere.
        ``runtime``: what runs the teacher, resolved (``resolve_runtime``)."""
        topk = config.storage == "topk"
        if topk and not readings:
            raise CacheError("top-k storage needs the readings (temperatures) it is built for")
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
            readings=[(float(t), bool(z)) for t, z in readings or ()] if topk else None,
            runtime=runtime,
        )

    def __post_init__(self) -> None:
        if self.readings is not None:  # JSON gives lists back: one form, for equality
            object.__setattr__(self, "readings", [(float(t), bool(z)) for t, z in self.readings])

    @property
    def key(self) -> str:
        return sha256_json({"format": FORMAT_VERSION, **asdict(self)})[:16]


def resolve_runtime(
    setting: Literal["auto", "pytorch", "onnxruntime"],
    device: torch.device,
    teacher_format: TeacherFormat = "checkpoint",
) -> Runtime:
    """What runs the teacher while the cache is built (``cache.runtime``). A teacher from an
    ONNX file runs in ONNX Runtime and a torch.export program in PyTorch, whatever the
    setting; a PyTorch module in ONNX Runtime on the CPU (auto: about twice PyTorch eager's
    throughput for the CNNs here, benchmarks/results/logit_cache.md) and in PyTorch on a GPU."""
    match teacher_format:
        case "onnx":
            return "onnxruntime"
        case "exported":
            return "pytorch"
        case "checkpoint":
            if setting == "auto":
                return "onnxruntime" if device.type == "cpu" else "pytorch"
            return setting
        case _:
            assert_never(teacher_format)


def pipeline_cache_spec(
    config: PipelineConfig,
    teacher_sha256: str,
    dataset_fingerprint: str,
    teacher_input: dict[str, Any] | None = None,
    class_index: list[int] | None = None,
    teacher_format: TeacherFormat = "checkpoint",
) -> CacheSpec:
    """The spec of the cache a config's students read: the student's view policy, the run's
    seed, the config's storage, for top-k the readings its distill method makes, and what
    runs the teacher on the config's device."""
    runtime = resolve_runtime(config.cache.runtime, resolve_device(config.device), teacher_format)
    return CacheSpec.create(
        teacher_sha256,
        dataset_fingerprint,
        config.student.train.augment,
        config.seed,
        config.cache,
        teacher_input=teacher_input,
        class_index=class_index,
        readings=cache_readings(config),
        runtime=runtime,
    )


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
    # Rows the teacher ran on in the build (the others copied from caches of earlier data
    # versions, by content); of a cache hit, none.
    computed_rows: int = 0


def index_dtype(num_classes: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise CacheError(f"{num_classes} classes do not fit a uint32 index")


_F32 = np.dtype(np.float32)


def _layout(
    spec: CacheSpec, rows: int, classes: int
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Array name -> (shape, dtype) for this spec."""
    values = np.dtype(spec.dtype)
    layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for kind in spec.kinds:
        match spec.storage:
            case "full":
                layout[f"{kind}logits"] = ((rows, spec.views, classes), values)
            case "topk":
                k, readings = spec.top_k or 0, spec.readings or []
                layout[f"{kind}values"] = ((rows, spec.views, k), values)
                layout[f"{kind}indices"] = ((rows, spec.views, k), index_dtype(classes))
                layout[f"{kind}rest_lse"] = ((rows, spec.views, len(readings)), _F32)
                if any(z for _, z in readings):
                    layout[f"{kind}moments"] = ((rows, spec.views, 2), _F32)
            case _:
                assert_never(spec.storage)
    return layout


def encode(
    logits: torch.Tensor, spec: CacheSpec, classes: int, kind: str = ""
) -> dict[str, np.ndarray]:
    """Float32 logits (..., classes) -> the stored arrays of one chunk; refuses values that
    are not finite or do not fit the storage dtype, rather than storing inf."""
    if not torch.isfinite(logits).all():
        raise CacheError("the teacher's logits are not finite (NaN or inf): nothing stored")
    values = np.dtype(spec.dtype)
    with np.errstate(over="ignore"):  # an overflowing cast is refused below, by name
        arrays = _encode(logits, spec, classes, kind, values)
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            largest = float(logits.abs().max())
            raise CacheError(
                f"{name}: the teacher's logits (largest |z| = {largest:.4g}) do not fit "
                f"{array.dtype.name} (finite only up to {np.finfo(array.dtype).max:.6g}): "
                "set cache.dtype=float32"
            )
    return arrays


def _encode(
    logits: torch.Tensor, spec: CacheSpec, classes: int, kind: str, values: np.dtype
) -> dict[str, np.ndarray]:
    match spec.storage:
        case "full":
            arrays = {f"{kind}logits": logits.numpy().astype(values)}
        case "topk":
            k = spec.top_k or 0
            top = logits.topk(k, dim=-1)
            arrays = {
                f"{kind}values": top.values.numpy().astype(values),
                f"{kind}indices": top.indices.numpy().astype(index_dtype(classes)),
            }
            readings = spec.readings or []
            rest_lse = []
            for temperature, standardized in readings:
                z = standardize(logits) if standardized else logits
                rest = z.scatter(-1, top.indices, float("-inf"))  # the top k masked out
                rest_lse.append(torch.logsumexp(rest / temperature, dim=-1))
            arrays[f"{kind}rest_lse"] = torch.stack(rest_lse, dim=-1).numpy()
            if any(z for _, z in readings):
                moments = torch.stack([logits.mean(-1), logits.std(-1)], dim=-1)
                arrays[f"{kind}moments"] = moments.numpy()
        case _:
            assert_never(spec.storage)
    return arrays


def _chunk_digest(arrays: Mapping[str, np.ndarray], start: int, stop: int) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name][start:stop]).data)
    return digest.hexdigest()


@dataclass(frozen=True)
class TopKReadings:
    """A batch's teacher from top-k storage, rebuilt for the readings it was built for
    (implements losses.TeacherReadings)."""

    values: torch.Tensor  # (..., k) float32, the top-k logits
    indices: torch.Tensor  # (..., k) int64
    rest_lse: torch.Tensor  # (..., R): LSE of the other logits / T, per reading
    moments: torch.Tensor | None  # (..., 2): mean and std of all the logits
    readings: tuple[tuple[float, bool], ...]
    num_classes: int

    def at(self, temperature: float, standardized: bool = False) -> torch.Tensor:
        """Logits (..., classes) whose softmax at ``temperature`` gives the top-k classes
        their exact probabilities and the others, evenly, the exact leftover mass: each
        other class gets T * (rest_lse - log(C - k)), so (C - k) exp(it / T) = exp(rest_lse)."""
        reading = (float(temperature), bool(standardized))
        if reading not in self.readings:
            raise CacheError(
                f"this top-k logit cache holds the teacher at {list(self.readings)} "
                f"(temperature, z-scored), not at {reading}: it was built for another "
                "distill config (the pipeline builds one per config)"
            )
        values = self.values
        if standardized:
            assert self.moments is not None  # written with every z-scored reading
            mean, std = self.moments[..., :1], self.moments[..., 1:]
            values = (values - mean) / (std + STANDARDIZE_EPS)
        others = self.num_classes - values.shape[-1]
        rest = self.rest_lse[..., self.readings.index(reading)]
        leftover = temperature * (rest - math.log(others))
        full = leftover[..., None].expand(*values.shape[:-1], self.num_classes).clone()
        return full.scatter_(-1, self.indices, values)

    @classmethod
    def decode(
        cls, arrays: Mapping[str, np.ndarray], spec: CacheSpec, num_classes: int, kind: str = ""
    ) -> TopKReadings:
        """The readings of stored top-k arrays (``encode``'s output, or rows of a cache)."""

        def read(name: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(arrays[f"{kind}{name}"]))

        return cls(
            values=read("values").float(),
            indices=read("indices").long(),
            rest_lse=read("rest_lse").float(),
            moments=read("moments").float() if f"{kind}moments" in arrays else None,
            readings=tuple(spec.readings or ()),
            num_classes=num_classes,
        )

    def to(self, device: torch.device) -> TopKReadings:
        moments = self.moments.to(device) if self.moments is not None else None
        return replace(
            self,
            values=self.values.to(device),
            indices=self.indices.to(device),
            rest_lse=self.rest_lse.to(device),
            moments=moments,
        )


class LogitCache:
    """A verified cache, read through memory maps: random rows, any view."""

    def __init__(self, directory: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.directory = directory
        self.manifest = manifest
        self.arrays = arrays
        self.spec = CacheSpec(**manifest["spec"])
        self.rows, self.views, self.num_classes = (
            manifest["rows"],
            manifest["views"],
            manifest["num_classes"],
        )

    def _kind(self, strong: bool) -> str:
        if strong and not self.spec.strong:
            raise CacheError(f"logit cache {self.directory} holds no strong views")
        return "strong_" if strong else ""

    def logits(self, rows: np.ndarray, views: np.ndarray, strong: bool = False) -> torch.Tensor:
        """Float32 logits (len(rows), classes) of the given rows at the given views (full
        storage; a top-k cache is read through ``batch_logits``, per temperature)."""
        name = f"{self._kind(strong)}logits"
        if name not in self.arrays:
            raise CacheError(f"logit cache {self.directory}: top-k storage, read per temperature")
        return torch.from_numpy(self.arrays[name][rows, views].astype(np.float32))

    def batch_logits(
        self,
        rows: np.ndarray,
        views: np.ndarray,
        device: torch.device | None = None,
        strong: bool = False,
        rendered: torch.Tensor | None = None,
    ) -> TeacherLogits:
        """What a loss reads of the teacher for these rows and views: the logits (full
        storage) or the top-k readings, on ``device``. ``rendered``, the views as the
        training loop rendered them, is not read: the cache holds the teacher on them (a live
        teacher, ``online_teacher.OnlineTeacher``, runs on them)."""
        kind = self._kind(strong)
        device = device or torch.device("cpu")
        if f"{kind}logits" in self.arrays:
            return self.logits(rows, views, strong).to(device)

        picked = {
            name: np.asarray(array[rows, views])
            for name, array in self.arrays.items()
            if name.startswith(kind) and (kind or not name.startswith("strong_"))
        }
        return TopKReadings.decode(picked, self.spec, self.num_classes, kind).to(device)


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
    try:
        spec = CacheSpec(**manifest["spec"])
    except TypeError as err:
        raise CacheError(f"logit cache manifest {manifest_path}: unreadable spec ({err})") from err
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
        computed_rows=0 if cache_hit else m.get("computed_rows", m["rows"]),
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
    batch_size: int = 128,
) -> CacheInfo:
    """Return the cache for ``spec``: reused when a verified one exists, else built.

    ``on_chunk(done, total)`` is called after each chunk is durably written (in-process
    builds). ``rebuild`` discards a finished or interrupted cache of this key and computes
    every chunk again. ``workers`` > 1 splits the chunks over that many launched processes
    (components.distributed); the bytes are the same for any count. ``batch_size``: the
    teacher's forward batch within a chunk (a chunk is the unit written and checksummed;
    small CNNs on a CPU run several times faster at 64-128 images than at 512).

    ``teacher``: a ``TeacherView`` (input recipe and class map of a teacher from elsewhere,
    matching the spec's), or a plain module fed the data's own recipe.
    """
    teacher = _as_view(teacher, spec, dataset.info)
    effective_input = teacher.spec.as_dict()  # the recipe in effect, for later versions' reuse
    apply_fair_threads()  # ONNX Runtime's sessions below take as many threads as PyTorch has
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
        # A forced rebuild computes every row: it is asked for when the bytes are in doubt.
        reuse = _plan_reuse(cache_root, spec, effective_input, dataset, none=rebuild)
        arrays, done_chunks = _open_partial(partial, spec, layout)
        bounds = [
            (s, min(s + chunk_rows, len(train_indices)))
            for s in range(0, len(train_indices), chunk_rows)
        ]
        finished = {entry[0] for entry in done_chunks}
        todo = [b for b in bounds if b[0] not in finished]
        parity, twin_seconds = None, 0.0
        if spec.runtime == "onnxruntime" and todo and (reuse.donor < 0).any():
            started = time.perf_counter()
            # The teacher's ONNX twin, beside the chunks until the cache is whole; checked
            # against PyTorch on the first views it will compute.
            start, stop = todo[0][0], min(todo[0][1], todo[0][0] + batch_size)
            sample = _render(dataset, np.arange(start, stop), spec, 0, strong=False)
            teacher, parity = onnx_twin(teacher, partial / "teacher.onnx", sample)
            device = torch.device("cpu")  # ONNX Runtime's CPU provider
            twin_seconds = time.perf_counter() - started
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
                batch_size,
                reuse,
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
            # ONNX Runtime's threads (a session opened above) do the teacher's work; PyTorch's
            # only render views, on one thread, so that no pool of its spins for cores
            # between the batches (about 10% of the build here).
            threads = 1 if spec.runtime == "onnxruntime" else torch.get_num_threads()
            with torch_threads(threads):
                for start, stop in todo:
                    done_chunks.append(
                        _build_chunk(
                            teacher,
                            spec,
                            dataset,
                            arrays,
                            partial,
                            (start, stop),
                            device,
                            batch_size,
                            reuse,
                        )
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
            "build_seconds": twin_seconds + sum(c[3] for c in done_chunks),
            # What a later data version's build reuses this cache by (_plan_reuse).
            "family": _family(spec),
            "teacher_input_effective": effective_input,
            "sample_ids": dataset.info.sample_ids,
            "ids_sha256": (
                _ids_digest(dataset.train_ids()) if dataset.info.sample_ids == "content" else None
            ),
            "computed_rows": len(train_indices) - reuse.rows_reused(),
            "reused_from": reuse.donors,
            "runtime_max_abs_diff_vs_pytorch": parity,
            "created_unix": time.time(),
        }
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        fsync_path(partial / "manifest.json")
        (partial / "chunks.jsonl").unlink()
        (partial / "teacher.onnx").unlink(missing_ok=True)
        if dataset.info.sample_ids == "content":  # last: no chunk or worker ever reads it
            np.save(partial / "ids.npy", dataset.train_ids())
            fsync_path(partial / "ids.npy")
        os.replace(partial, final)
        fsync_path(cache_root)
        return _info(open_logit_cache(final, expected_key=spec.key), cache_hit=False)


@dataclass(frozen=True)
class Reuse:
    """Where each row of a build comes from: ``donor[i]`` indexes ``donors`` (the finished
    caches of earlier data versions it is copied from, at their row ``row[i]``), or is -1:
    the teacher runs on it."""

    donors: list[str]
    donor: np.ndarray
    row: np.ndarray

    def rows_reused(self) -> int:
        return int((self.donor >= 0).sum())


def _family(spec: CacheSpec) -> str:
    """What a sample's cached entries depend on besides the sample: the spec without the
    dataset (and the teacher's input recipe, compared as it is in effect, see _plan_reuse)."""
    fields = {
        k: v for k, v in asdict(spec).items() if k not in ("dataset_fingerprint", "teacher_input")
    }
    return sha256_json({"format": FORMAT_VERSION, **fields})[:16]


def _plan_reuse(
    cache_root: Path,
    spec: CacheSpec,
    effective_input: dict[str, Any],
    dataset: Dataset,
    none: bool = False,
) -> Reuse:
    """Which training samples an earlier data version's cache already holds, by content id.

    A sample's views are replayed from (view seed, its content id, view number), so the same
    image under the same teacher, fed the same input recipe, has the same cached entries in
    every data version: those are copied, and the teacher runs only on new samples. Nothing
    is reused for position ids (a dataset split by shuffle) or mixed views (a mixup partner
    is drawn from the whole training set, which grew)."""
    rows = len(dataset.splits["train"])
    nothing = Reuse([], np.full(rows, -1, np.int64), np.zeros(rows, np.int64))
    policy = AugmentConfig(**spec.augment)
    mixed = policy.enabled and policy.mixup_alpha > 0
    if none or dataset.info.sample_ids != "content" or mixed:
        return nothing
    family = _family(spec)
    ids = dataset.train_ids()
    donor, row = nothing.donor.copy(), nothing.row.copy()
    donors: list[str] = []
    candidates = sorted(
        (d for d in cache_root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.stat().st_mtime,
        reverse=True,  # the newest first: the most samples in common, as data grows
    )
    for directory in candidates:
        if not (donor < 0).any():
            break
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            manifest.get("family") != family
            or manifest.get("teacher_input_effective") != effective_input
            or manifest.get("sample_ids") != "content"
            or directory.name == spec.key
        ):
            continue
        try:
            open_logit_cache(directory)  # every chunk verified before any row is copied
            theirs = np.load(directory / "ids.npy")
        except (CacheError, OSError, ValueError):
            continue  # a damaged cache gives nothing; its samples are computed
        if len(theirs) != manifest["rows"] or _ids_digest(theirs) != manifest.get("ids_sha256"):
            continue  # ids that do not name its rows would copy the wrong samples
        order = np.argsort(theirs, kind="stable")
        at = np.searchsorted(theirs[order], ids).clip(0, len(theirs) - 1)
        found = (theirs[order][at] == ids) & (donor < 0)
        if found.any():
            donor[found], row[found] = len(donors), order[at][found]
            donors.append(str(directory))
    return Reuse(donors, donor, row)


def _ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.uint64).data).hexdigest()


def _as_view(teacher: nn.Module, spec: CacheSpec, info: DatasetInfo) -> TeacherView:
    if not isinstance(teacher, TeacherView):
        teacher = TeacherView(teacher, InputSpec.of_data(info), None)
    wanted = spec.teacher_input or InputSpec.of_data(info).as_dict()
    if teacher.spec.as_dict() != wanted or teacher.class_index != spec.class_index:
        raise CacheError(
            f"the teacher's input recipe {teacher.spec.as_dict()} and class map "
            f"{teacher.class_index} are not the cache spec's ({wanted}, {spec.class_index})"
        )
    if isinstance(teacher.model, OnnxModule) and spec.runtime != "onnxruntime":
        raise CacheError("an ONNX teacher runs in ONNX Runtime: the spec says runtime=pytorch")
    return teacher


def _build_chunk(
    teacher: nn.Module,
    spec: CacheSpec,
    dataset: Dataset,
    arrays: dict[str, np.memmap],
    partial: Path,
    bounds: tuple[int, int],
    device: torch.device,
    batch_size: int,
    reuse: Reuse,
) -> list[Any]:
    """Fill rows [start, stop): copied where an earlier data version's cache holds the
    sample, computed otherwise; flush them, then journal their checksum (durably)."""
    start, stop = bounds
    started = time.perf_counter()
    rows = np.arange(start, stop)
    donor = reuse.donor[start:stop].copy()
    for d, directory in enumerate(reuse.donors):
        mine = donor == d
        if not mine.any():
            continue
        try:  # verified when the build planned its reuse
            theirs = open_logit_cache(Path(directory), verify=False).arrays
        except CacheError:
            donor[mine] = -1  # gone since (a rebuild, a cleanup): computed instead
            continue
        for name in arrays:
            arrays[name][rows[mine]] = theirs[name][reuse.row[start:stop][mine]]
    computed = rows[donor < 0]
    for kind in spec.kinds if len(computed) else ():
        logits = teacher_view_logits(
            teacher, dataset, computed, spec, device, bool(kind), batch_size
        )
        try:
            encoded = encode(logits, spec, dataset.info.num_classes, kind)
        except CacheError as err:
            raise CacheError(f"logit cache build, rows {start}-{stop}: {err}") from err
        for name, chunk in encoded.items():
            arrays[name][computed] = chunk
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
    batch_size: int,
    reuse: Reuse,
) -> int:
    """One launched process: chunks rank, rank + world, ... of ``todo``, written into the
    shared memory maps; no collectives needed, the chunks are independent."""
    from components.data import load_dataset

    rank, world = rank_and_world()
    device = worker_device(device_type)
    teacher = place(teacher, device).eval()
    dataset = load_dataset(dataset_path)
    names = _layout(spec, len(dataset.splits["train"]), dataset.info.num_classes)
    arrays = {n: np.load(Path(partial) / f"{n}.npy", mmap_mode="r+") for n in names}
    mine = todo[rank::world]
    for bounds in mine:
        _build_chunk(
            teacher, spec, dataset, arrays, Path(partial), bounds, device, batch_size, reuse
        )
    return len(mine)


def _as_json(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def _open_partial(
    partial: Path, spec: CacheSpec, layout: dict[str, tuple[tuple[int, ...], np.dtype]]
) -> tuple[dict[str, np.memmap], list[list[Any]]]:
    """Memory maps of an interrupted build of this spec and its finished chunks, or new ones."""
    spec_path, journal = partial / "spec.json", partial / "chunks.jsonl"
    if spec_path.is_file() and json.loads(spec_path.read_text()) == _as_json(asdict(spec)):
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
    strong: bool = False,
    batch_size: int = 128,
) -> torch.Tensor:
    """Float32 logits (len(rows), K, classes) of the teacher (a ``TeacherView``) on each
    replayed view (``strong``: on each view's strong view), ``batch_size`` images a pass."""
    per_view = []
    for view in range(spec.views):
        images = _render(dataset, rows, spec, view, strong, device)
        batches = [
            teacher(images[b : b + batch_size]).float().cpu()
            for b in range(0, len(images), batch_size)
        ]
        per_view.append(torch.cat(batches))
    return torch.stack(per_view, dim=1)


def _render(
    dataset: Dataset,
    rows: np.ndarray,
    spec: CacheSpec,
    view: int,
    strong: bool,
    device: torch.device | None = None,
) -> torch.Tensor:
    """View ``view`` (``strong``: its strong view) of training-split ``rows``, replayed."""
    train_indices, train_ids = dataset.splits["train"], dataset.train_ids()
    policy = AugmentConfig(**spec.augment)

    def fetch(r: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(dataset.images[train_indices[r]])).to(device)

    if strong:
        return render_strong_views(fetch, rows, train_ids, view, policy, spec.view_seed)
    return render_views(fetch, rows, train_ids, view, policy, spec.view_seed).images
