"""What a stage is: one module that declares its name, its inputs and its output.

A stage declares
- ``name``: the one name of the Prefect task, the MLflow child run, ``--force-stage``, the
  reuse tags, the reports and its folder under the work dir;
- ``reads``: the config sections that decide its output (dotted paths: ``"teacher"``,
  ``"cache.views"``), and ``settings``: sections it reads that change how it works but never
  what it produces (worker counts, chunk sizes);
- ``needs``: the names of the upstream stages whose references it takes (a stage never
  imports another: the order lives in the pipeline's stage list alone);
- ``output``: its reference type, whose ``verify()`` finds damaged or missing files;
- ``run(ctx)``: calls ``components/`` and returns an ``Outcome``: the reference with the
  params, metrics, tags and artifacts to log.

The fingerprint is derived from the declarations: the values of ``reads``, the identities of
the upstream references, the stage's ``version`` and ``environment()``. A stage sees the config
only through a view of what it declared: reading an undeclared section is an error, so a
field that decides the output cannot be left out of the fingerprint. ``flows/runner.py`` owns
everything stages share (MLflow child run, Prefect caching, damage checks, reuse records).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from components.config import PipelineConfig, flatten
from components.io import sha256_file, sha256_json

if TYPE_CHECKING:
    from flows.tracking import Tracker
    from flows.tracking.runs import MetricSink


class Ref(BaseModel):
    """What a stage hands on: small, JSON-serialisable, frozen. Paths are relative to the work
    dir, so a work dir can be moved or mounted elsewhere and its cached stages still hold."""

    model_config = ConfigDict(frozen=True)

    run_id: str = ""  # the MLflow run that produced it (an earlier run's when reused)

    def identity(self) -> Any:
        """What downstream fingerprints hash: the content, never who made it."""
        return self.model_dump(mode="json", exclude={"run_id"})

    def verify(self, work_dir: Path) -> str | None:
        """Why this reference can no longer be used (a file gone or changed), else None."""
        return None

    def refusal(self) -> str | None:
        """Why the run's model was refused, when this reference says it was (a registry floor,
        a promotion that said no); None otherwise. A refused run exits with its own code."""
        return None

    def dataset(self) -> tuple[str, dict[str, int]] | None:
        """For a reference to prepared data: its fingerprint and split sizes (what the runner
        logs as the MLflow dataset inputs of the stages that read it); None otherwise."""
        return None


def file_problem(work_dir: Path, relative: str, sha256: str | None = None) -> str | None:
    """A file a reference points at that is gone, or whose sha256 changed."""
    path = work_dir / relative
    if not path.is_file():
        return f"{path} no longer exists"
    if sha256 is not None and sha256_file(path) != sha256:
        return f"{path} changed since it was cached (sha256 differs)"
    return None


@dataclass
class Record:
    """What to log to one MLflow run."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    step: int = 0  # the step of ``metrics`` (training: the last epoch)
    tags: dict[str, Any] = field(default_factory=dict)
    files: list[tuple[Path, str | None]] = field(default_factory=list)  # (file or dir, folder)
    texts: dict[str, str | dict[str, Any]] = field(default_factory=dict)  # artifact file -> text
    # A PyTorch model to log as the run's MLflow model, with its input's (channels, (h, w)).
    model: tuple[Any, int, tuple[int, int]] | None = None


R = TypeVar("R", bound=Ref)


@dataclass
class Outcome(Generic[R]):
    """A stage's result: its reference and what to log on its run and on the parent run.
    (A reused stage's run gets the earlier run's params and metrics; ``parent`` is logged only
    when the stage runs.)"""

    ref: R
    record: Record = field(default_factory=Record)
    parent: Record = field(default_factory=Record)


@dataclass(frozen=True)
class Variant:
    """A model a stage produces, as ``kd compare`` and the summary show it: which metrics and
    params of the stage's MLflow run hold its figures. ``name`` may contain ``{run}``, the
    run's name (``student-kd[distill.temperature=2]`` in a sweep)."""

    name: str
    runtime: str  # "pytorch" or "onnxruntime"
    accuracy: str  # metric
    size: str  # metric, bytes
    parameters: str = "model.parameters"  # param
    runtime_param: str = "model.runtime"  # a param that overrides ``runtime`` where logged


class PreflightError(ValueError):
    """Bad input found before any work: one line for the user, exit code 2."""


class UndeclaredRead(AttributeError):
    """A stage read a config section it does not declare."""


class ConfigView:
    """The config as one stage sees it: only the declared sections (and what is under them)."""

    def __init__(self, node: Any, allowed: frozenset[str], stage: str, prefix: str = "") -> None:
        self._node, self._allowed, self._stage, self._prefix = node, allowed, stage, prefix

    def __getattr__(self, name: str) -> Any:
        path = f"{self._prefix}{name}"
        value = getattr(self._node, name)
        if any(path == a or path.startswith(f"{a}.") for a in self._allowed):
            return value
        if any(a.startswith(f"{path}.") for a in self._allowed):
            return ConfigView(value, self._allowed, self._stage, f"{path}.")
        raise UndeclaredRead(
            f"stage {self._stage!r} reads config {path!r} but does not declare it in reads or "
            "settings"
        )


def section(config: PipelineConfig, path: str) -> Any:
    """The JSON value of a dotted config path."""
    node: Any = config
    for part in path.split("."):
        node = getattr(node, part)
    return node.model_dump(mode="json") if isinstance(node, BaseModel) else _plain(node)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def config_params(config: PipelineConfig, paths: tuple[str, ...]) -> dict[str, Any]:
    """The declared sections as flat MLflow params under their config names."""
    params: dict[str, Any] = {}
    for path in paths:
        value = section(config, path)
        params |= flatten(value, f"{path}.") if isinstance(value, dict) else {path: value}
    return params


class Stage(Generic[R]):
    """Base of every stage; see the module docstring for what a subclass declares."""

    name: ClassVar[str]
    output: ClassVar[type[Ref]]
    reads: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()  # names of upstream stages
    cached: ClassVar[bool] = True  # reused by Prefect while its fingerprint is unchanged
    version: ClassVar[int] = 1  # bump when the output changes meaning: old results then miss
    variants: ClassVar[tuple[Variant, ...]] = ()
    # The data splits the stage reads ("train", "val", "test"): logged as the MLflow dataset
    # inputs of its run, with their context (training, validation, testing).
    splits: ClassVar[tuple[str, ...]] = ()

    def enabled(self, config: PipelineConfig) -> bool:
        return True

    def preflight(self, config: PipelineConfig) -> None:
        """Refuse, before any work and writing nothing, an input this stage cannot use (a
        missing file, a model that does not fit the data): raise ``PreflightError``."""

    def environment(self, config: PipelineConfig) -> dict[str, Any]:
        """Inputs outside the config that decide the output: the machine, for timings; the
        content of a file or registry version the config only names."""
        return {}

    def run(self, ctx: StageContext) -> Outcome[R]:
        raise NotImplementedError

    def summary(self, ref: R, work_dir: Path) -> list[str]:
        """Lines ``kd run`` prints about this stage's result."""
        return []

    def fingerprint(self, config: PipelineConfig, inputs: Mapping[str, Ref]) -> str:
        return sha256_json(
            {
                "stage": self.name,
                "version": self.version,
                "config": {path: section(config, path) for path in self.reads},
                "inputs": {need: inputs[need].identity() for need in self.needs},
                "environment": self.environment(config),
            }
        )[:16]


@dataclass(frozen=True)
class PipelineContext:
    """Where a pipeline run logs and writes; the same for every stage of the run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    work_dir: str


@dataclass
class StageContext:
    """What ``Stage.run`` gets: the config view, upstream references, where to write, and
    live handles on its MLflow run (for what must be logged during the run)."""

    stage: Stage[Any]
    config: PipelineConfig  # a ConfigView: only the declared sections
    inputs: Mapping[str, Ref]
    fingerprint: str
    run_name: str
    run_id: str
    pipeline: PipelineContext
    stages: tuple[Stage[Any], ...]  # the whole pipeline, in order
    tracker: Tracker
    log: logging.Logger | logging.LoggerAdapter[Any]
    forced: bool = False  # --force / --force-stage named it: rebuild, do not reuse from disk

    def input(self, stage: str, kind: type[R]) -> R:
        """The reference the upstream stage named ``stage`` handed on (declared in needs)."""
        if stage not in self.inputs:
            raise KeyError(f"stage {self.stage.name!r} reads {stage!r} but does not need it")
        ref = self.inputs[stage]
        if not isinstance(ref, kind):
            raise TypeError(f"{stage} handed on a {type(ref).__name__}, not a {kind.__name__}")
        return ref

    @property
    def work_dir(self) -> Path:
        return Path(self.pipeline.work_dir)

    @property
    def root(self) -> Path:
        """The stage's own folder under the work dir, named after it."""
        return self.work_dir / self.stage.name

    @property
    def directory(self) -> Path:
        """This run's folder: addressed by the fingerprint (by the pipeline run when the stage
        is not cached, so every run keeps its own)."""
        return self.root / (self.fingerprint if self.stage.cached else self.pipeline.parent_run_id)

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.work_dir))

    def declared_config(self) -> dict[str, Any]:
        """The declared sections' values, e.g. to keep in a checkpoint."""
        stage = self.stage
        return {path: section(self.config, path) for path in stage.reads}

    def metrics(self) -> MetricSink:
        """A picklable handle that logs metrics to this stage's run (launched processes too)."""
        from flows.tracking.runs import MetricSink

        return MetricSink(self.pipeline.tracking_uri, self.run_id)


class StageError(ValueError):
    """An unknown stage name given to ``--force-stage``."""


def cached_names(stages: Sequence[Stage[Any]]) -> list[str]:
    return [stage.name for stage in stages if stage.cached]


def resolve_force(force: Sequence[str] | None, stages: Sequence[Stage[Any]]) -> frozenset[str]:
    """Stage names to recompute regardless of the cache; ``all`` means every cached stage."""
    names, cached = set(force or []), cached_names(stages)
    unknown = names - {*cached, "all"}
    if unknown:
        raise StageError(
            f"force: unknown stage(s) {', '.join(sorted(unknown))}; "
            f"choose from all, {', '.join(cached)}"
        )
    return frozenset(cached) if "all" in names else frozenset(names)


def check_pipeline(stages: tuple[Stage[Any], ...]) -> None:
    """Names unique; every stage after the stages it needs."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} appears twice in the pipeline")
        missing = [need for need in stage.needs if need not in seen]
        if missing:
            raise ValueError(f"stage {stage.name!r} needs {missing} earlier in the pipeline")
        seen.add(stage.name)
