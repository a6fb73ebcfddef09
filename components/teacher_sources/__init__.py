"""Teacher sources: where the teacher comes from, one module each, behind one small protocol.

A teacher source (``teacher.source.kind``) is a config class in components/config.py (pure
data: what to read, and ``implementation``, the module that reads it) and that module, here,
whose ``IMPLEMENTATION`` is a ``Source``:
- ``trained_here``: the teacher stage trains the teacher (the teacher recipe) instead of
  bringing one in;
- ``identity``: what the teacher is, for the fingerprint (a file's sha256, the registry
  version an alias points at now): a new teacher invalidates exactly what depends on it;
- ``bring_in``: the teacher as a file of ours in the stage's folder (copied, converted,
  checked), with the class names it knows and where it came from;
- ``describe``: its architecture in words, for lineage.

The pre-flight check is the same for every source (the teacher stage brings it into a
scratch folder and runs it against the data). The MLflow source reads a model registry it is
given (``ModelStore``): flows/ gives it MLflow, so nothing here imports MLflow. Adding a
source is its module, its config class in the ``TeacherSource`` union and its test
(docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from components.config import Variant
from components.teachers import InputSpec, TeacherFormat
from components.variants import implementation


@dataclass(frozen=True)
class Brought:
    """A teacher brought into the work dir."""

    path: Path  # the teacher as a file of ours
    format: TeacherFormat
    class_names: list[str] | None  # the classes its file names (None: unnamed outputs)
    origin: str  # what it was made from, in words: a path, a URI
    # Files the model needs beside ``path`` (an ONNX model's external data): hashed with it.
    extra_files: tuple[Path, ...] = ()


class ModelStore(Protocol):
    """A model registry, as the MLflow teacher source reads it (flows/ gives MLflow's)."""

    def resolve_model(self, uri: str) -> tuple[str, str]:
        """(where its files are, what it is now: the registry version an alias names)."""
        ...

    def fetch_model(self, uri: str, destination: Path) -> tuple[str, Any]:
        """("onnx", the .onnx file) or ("pytorch", the module), downloaded."""
        ...


@runtime_checkable
class Source(Protocol):
    trained_here: bool

    def identity(self, source: Any, models: ModelStore) -> dict[str, Any]: ...

    def bring_in(
        self, source: Any, spec: InputSpec, directory: Path, models: ModelStore
    ) -> Brought: ...

    def describe(self, source: Any, brought: Brought) -> str: ...


def source_of(source: Variant) -> Source:
    found: Source = implementation(source, Source)
    return found
