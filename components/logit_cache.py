"""The teacher's logits on disk: the only way the teacher's knowledge reaches a student.

Layout of ``<cache_root>/<key>/``:
- ``logits.npy``: (rows, classes) float16 (or float32), row i = the i-th sample of the
  training split (``splits["train"][i]``), on the un-augmented image; read by memory map.
- ``manifest.json``: what produced it (teacher weights sha256, dataset fingerprint, view
  policy, dtype), its shape, and the sha256 of ``logits.npy``.

The key is a fingerprint of everything that produced the logits, so a rerun with the same
teacher and data finds the cache, and a different teacher can never pick up a stale one.
The directory is written under a temporary name and renamed whole.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from components.config import CacheConfig
from components.data import Dataset
from components.io import atomic_dir, sha256_file, sha256_json
from components.training import predict_logits, show_progress

FORMAT_VERSION = 1
VIEW_POLICY = {"augmentation": "none", "views_per_sample": 1}


class CacheError(ValueError):
    """A cache that is missing, corrupt or does not match; the message names the file."""


@dataclass(frozen=True)
class CacheInfo:
    path: str
    key: str
    rows: int
    num_classes: int
    dtype: str
    sha256: str
    bytes_per_sample: int
    reused: bool


def cache_key(teacher_sha256: str, dataset_fingerprint: str, config: CacheConfig) -> str:
    return sha256_json(
        {
            "format": FORMAT_VERSION,
            "teacher_sha256": teacher_sha256,
            "dataset_fingerprint": dataset_fingerprint,
            "dtype": config.dtype,
            "views": VIEW_POLICY,
        }
    )[:16]


def _info(directory: Path, manifest: dict[str, Any], reused: bool) -> CacheInfo:
    rows, classes = manifest["shape"]
    return CacheInfo(
        path=str(directory),
        key=manifest["key"],
        rows=rows,
        num_classes=classes,
        dtype=manifest["dtype"],
        sha256=manifest["sha256"],
        bytes_per_sample=manifest["bytes_per_sample"],
        reused=reused,
    )


def build_logit_cache(
    teacher: nn.Module,
    teacher_sha256: str,
    dataset: Dataset,
    cache_root: Path,
    config: CacheConfig,
    device: torch.device,
) -> CacheInfo:
    """Run the teacher over the training split once, in chunks written into a memory map.

    An existing, verified cache with the same key is reused instead.
    """
    key = cache_key(teacher_sha256, dataset.info.fingerprint, config)
    directory = cache_root / key
    if (directory / "manifest.json").is_file():
        try:
            _, manifest = open_logit_cache(directory, verify=True)
            return _info(directory, manifest, reused=True)
        except CacheError:
            pass  # corrupt: rebuilt below, replacing it whole
    train_indices = dataset.splits["train"]
    shape = (len(train_indices), dataset.info.num_classes)
    dtype = np.dtype(config.dtype)
    teacher = teacher.to(device).eval()
    with atomic_dir(directory) as tmp:
        logits = np.lib.format.open_memmap(tmp / "logits.npy", mode="w+", dtype=dtype, shape=shape)
        starts = range(0, shape[0], config.batch_size)
        for start in tqdm(starts, desc="logit cache", disable=not show_progress(), unit="chunk"):
            rows = train_indices[start : start + config.batch_size]
            chunk = predict_logits(teacher, dataset.images[rows], dataset, device)
            logits[start : start + len(rows)] = chunk.numpy().astype(dtype)
        logits.flush()
        del logits
        manifest = {
            "format_version": FORMAT_VERSION,
            "key": key,
            "teacher_sha256": teacher_sha256,
            "dataset_fingerprint": dataset.info.fingerprint,
            "rows": "row i holds the logits of training-split sample i (splits['train'][i])",
            "train_indices_sha256": sha256_json(train_indices.tolist()),
            "views": VIEW_POLICY,
            "shape": list(shape),
            "dtype": dtype.name,
            "bytes_per_sample": int(dtype.itemsize * shape[1]),
            "sha256": sha256_file(tmp / "logits.npy"),
            "created_unix": time.time(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return _info(directory, manifest, reused=False)


def open_logit_cache(directory: Path, verify: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Memory-map the logits after checking them against the manifest."""
    manifest_path = directory / "manifest.json"
    logits_path = directory / "logits.npy"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"logit cache manifest {manifest_path}: unreadable ({err})") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"logit cache {directory}: format {manifest.get('format_version')!r}")
    if verify and (not logits_path.is_file() or sha256_file(logits_path) != manifest["sha256"]):
        raise CacheError(f"logit cache {logits_path}: missing or sha256 differs from manifest")
    try:
        logits = np.load(logits_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise CacheError(f"logit cache {logits_path}: unreadable ({err})") from err
    if list(logits.shape) != manifest["shape"] or logits.dtype.name != manifest["dtype"]:
        raise CacheError(
            f"logit cache {logits_path}: {logits.dtype.name}{list(logits.shape)} does not match "
            f"manifest {manifest['dtype']}{manifest['shape']}"
        )
    return logits, manifest
