"""What stages hand on: small, JSON-serialisable, frozen references (paths relative to the
work dir, ids, fingerprints), never live models or tensors. One module for all of them: a
stage reads the references it needs from here, by the name of the stage that made them
(``ctx.input("teacher", ModelRef)``), and never imports another stage.

Prefect persists a cached stage's reference under its class's import path. Results written
before these classes moved here name the stage modules (``flows.stages.training.ModelRef``);
every stage module imports its own output type from here, so those paths still resolve and
an existing work dir keeps its cached stages (tests/flows/test_stage.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.checkpoint import load_checkpoint
from components.data import Dataset, DatasetInfo, load_dataset
from components.inference import predict_logits
from components.io import sha256_files
from components.logit_cache import CacheError, CacheInfo, LogitCache, open_logit_cache
from components.onnx_export import ExportResult
from components.teachers import InputSpec, TeacherFormat, TeacherView, load_teacher
from flows.stage import Ref, file_problem

# The ONNX student's names as a model variant (the summary, kd compare, the registry).
ONNX_VARIANT = "student-kd-onnx"
INT8_VARIANT = f"{ONNX_VARIANT}-int8"
# The stages that train (or bring in) a model, in the pipeline's order.
MODEL_STAGES = ("teacher", "student-baseline", "student-kd")


class DataRef(Ref):
    directory: str  # relative to the work dir
    fingerprint: str
    split_sizes: dict[str, int]

    def identity(self) -> Any:
        return self.fingerprint

    def verify(self, work_dir: Path) -> str | None:
        return file_problem(work_dir, f"{self.directory}/meta.json")

    def dataset(self) -> tuple[str, dict[str, int]] | None:
        return self.fingerprint, self.split_sizes

    def load(self, work_dir: Path) -> Dataset:
        return load_dataset(work_dir / self.directory)

    def info(self, work_dir: Path) -> DatasetInfo:
        return DatasetInfo.read(work_dir / self.directory)


class ModelRef(Ref):
    arch: str
    checkpoint: str  # relative to the work dir: model.pt, or model.onnx / model.pt2 (teachers)
    sha256: str
    history: str  # history.json beside the checkpoint: metrics per epoch
    parameters: int
    size_bytes: int
    test_accuracy: float  # reported, never decided on
    val_accuracy: float  # what any choice between models reads
    format: TeacherFormat = "checkpoint"
    # A teacher from elsewhere: its own input recipe (None: the data's) and, per dataset
    # class, the output that scores it (None: the dataset's classes in order).
    input_spec: dict[str, Any] | None = None
    class_index: list[int] | None = None
    # Files the model needs beside ``checkpoint`` (an ONNX teacher's external data), relative
    # to the work dir; ``sha256`` is then over all of them (components.io.sha256_files).
    extra_files: tuple[str, ...] = ()

    def identity(self) -> Any:
        return [self.sha256, self.input_spec, self.class_index]

    def spec(self, info: DatasetInfo) -> InputSpec:
        """The input the model takes: its own recipe, or the data's."""
        return InputSpec.from_dict(self.input_spec) if self.input_spec else InputSpec.of_data(info)

    def view(self, work_dir: Path, info: DatasetInfo) -> TeacherView:
        """The model behind its input recipe and class map (see components/teachers.py)."""
        model = load_teacher(work_dir / self.checkpoint, self.format)
        return TeacherView(model, self.spec(info), self.class_index)

    def correct(self, work_dir: Path, dataset: Dataset, split: str) -> np.ndarray:
        """Which images of a split this student's checkpoint classifies right, in the split's
        order: the paired predictions two students are compared on."""
        images, labels = dataset.split(split)
        model, _ = load_checkpoint(work_dir / self.checkpoint, expected_sha256=self.sha256)
        logits = predict_logits(model, np.asarray(images), dataset, torch.device("cpu"))
        return np.asarray(logits.argmax(1).numpy() == np.asarray(labels))

    def input_recipe(self, info: DatasetInfo) -> str:
        return self.spec(info).describe()

    def input_shape(self, info: DatasetInfo) -> tuple[int, int, int]:
        spec = self.spec(info)
        return (spec.channels, *spec.image_size)

    def verify(self, work_dir: Path) -> str | None:
        if self.extra_files:
            files = [work_dir / f for f in (self.checkpoint, *self.extra_files)]
            gone = [str(f) for f in files if not f.is_file()]
            if gone:
                return f"{gone[0]} no longer exists"
            if sha256_files(files) != self.sha256:
                return f"{files[0]} or its data changed since it was cached (sha256 differs)"
            return file_problem(work_dir, self.history)
        return file_problem(work_dir, self.checkpoint, self.sha256) or file_problem(
            work_dir, self.history
        )


class CacheRef(Ref):
    info: CacheInfo  # its path relative to the work dir

    def identity(self) -> Any:
        return self.info.key

    def verify(self, work_dir: Path) -> str | None:
        try:
            self.open(work_dir)
        except CacheError as err:
            return str(err)
        return None

    def open(self, work_dir: Path) -> LogitCache:
        return open_logit_cache(work_dir / self.info.path, expected_key=self.info.key)


class OnnxRef(Ref):
    """The exported student (float32, its path relative to the work dir) and, when
    configured, its INT8 twin."""

    export: ExportResult
    parameters: int
    int8_model: str | None
    int8_sha256: str | None
    int8_test_accuracy: float | None

    def identity(self) -> Any:
        return [self.export.sha256, self.int8_sha256]

    def verify(self, work_dir: Path) -> str | None:
        problem = file_problem(work_dir, self.export.path, self.export.sha256)
        if problem is None and self.int8_model is not None:
            problem = file_problem(work_dir, self.int8_model, self.int8_sha256)
        return problem


class BenchmarkRef(Ref):
    json_path: str  # relative to the work dir
    markdown_path: str
    results: list[dict[str, Any]]

    def verify(self, work_dir: Path) -> str | None:
        return file_problem(work_dir, self.json_path) or file_problem(work_dir, self.markdown_path)


class HandoffRef(Ref):
    bundle: str  # relative to the work dir
    model_name: str
    version: str | None  # the new version; or the one it equals; None when below a floor
    registered: bool  # a new version was registered by this run
    registration: str  # what happened, in words
    alias: str
    int8_kept: bool
    int8_reason: str

    def refusal(self) -> str | None:
        # Not registered and equal to no version: refused by a registry floor.
        return self.registration if not self.registered and self.version is None else None


class PromotionRef(Ref):
    promoted: bool
    decision: str
    reason: str
    model_name: str
    challenger_version: str | None  # None: nothing was registered (below a floor)
    champion_version_before: str | None
    champion_version_after: str | None
    markdown: str

    def refusal(self) -> str | None:
        if self.decision in ("rejected", "incomparable"):
            return f"not promoted ({self.decision}): {self.reason}"
        return None


class ReportRef(Ref):
    directory: str  # relative to the work dir
    summary_markdown: str  # the table, and under it what distillation bought on test
    comparison_markdown: str
    files: dict[str, str]
