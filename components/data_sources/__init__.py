"""Data sources: one module each, behind one small protocol.

A data source (``data.kind``) is a config class in components/config.py (pure data: where
the data is, ``dataset_name`` and ``uri``, and ``implementation``, the module that reads it)
and that module, here, whose ``IMPLEMENTATION`` is a ``Source``:
- ``check``: fail fast, before any work, on a source that cannot possibly be read;
- ``load``: the images (uint8 NCHW), labels, class names, the source's own test set if it
  has one, and an identity independent of where the files lie;
- ``signature``: (class names, channels, image size), read without loading everything: what
  the pre-flight checks compare a teacher and a student with;
- ``sample``: one image, uint8 (1, C, H, W) as the pipeline prepares it, read without
  loading everything: what the pre-flight check runs a teacher on;
- ``version``: a short digest of the source's files as they are now (names, sizes and
  modification times, no image decoded): it changes when images are added, removed or
  rewritten, in seconds, which is what lets a deployment retrain only when data arrives
  (``kd serve --watch``). A change of version that leaves the images the same only costs a
  run whose stages are all reused.

Splitting, fingerprinting and storing (components/data.py) and every later stage need
nothing more. Adding a source is its module, its config class in the ``DataSource`` union
and its test (docs/extending.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from components.config import Variant
from components.variants import implementation


class DataError(ValueError):
    """A data source that cannot be read; the message names the file or directory."""


@dataclass(frozen=True)
class SourceData:
    images: np.ndarray  # uint8, (N, C, H, W)
    labels: np.ndarray  # int64, (N,)
    class_names: list[str]
    official_test: np.ndarray | None  # bool mask of the source's own test set, if it has one
    identity: dict[str, str]  # what the data is, independent of where it lies


@runtime_checkable
class Source(Protocol):
    def check(self, source: Any) -> None: ...

    def load(self, source: Any) -> SourceData: ...

    def signature(self, source: Any) -> tuple[list[str], int, int]: ...

    def sample(self, source: Any) -> np.ndarray: ...

    def version(self, source: Any) -> str: ...


def source_of(source: Variant) -> Source:
    found: Source = implementation(source, Source)
    return found


def check_source(source: Variant) -> None:
    """Fail fast, before any work, on a source that cannot possibly be read."""
    source_of(source).check(source)


def load_source(source: Variant) -> SourceData:
    return source_of(source).load(source)


def source_signature(source: Variant) -> tuple[list[str], int, int]:
    """(class names, channels, image size) of a source, read without preparing it."""
    return source_of(source).signature(source)


def source_version(source: Variant) -> str:
    """A digest of the source's files as they are now; see ``Source.version``."""
    return source_of(source).version(source)


def files_version(root: Path, files: Iterable[Path]) -> str:
    """The digest of ``files`` (under ``root``) by relative name, size and modification time:
    what ``Source.version`` is for sources made of files. A missing root is a DataError."""
    if not root.exists():
        raise DataError(f"{root}: not found")
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        entry = f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        digest.update(entry.encode(errors="surrogateescape"))
    return digest.hexdigest()[:16]


def all_files(root: Path) -> list[Path]:
    """Every file under ``root``, through symbolically linked folders too (a class folder
    linked from another disk is read by the loader, so its files are part of the data)."""
    return [Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names]


def source_sample(source: Variant) -> np.ndarray:
    """One image of the source, uint8 (1, C, H, W), read without preparing the data."""
    return source_of(source).sample(source)
