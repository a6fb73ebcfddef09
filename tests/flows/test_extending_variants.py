"""A distillation method and a teacher source, defined here and nowhere in the project: each a
config kind (pure data, naming where its behaviour is) added to its union in a config of our
own, and its behaviour behind the variant's protocol. A tiny pipeline runs with both, through
the project's stages, none of which names them (docs/extending.md walks through it)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pytest
import torch
import torch.nn.functional as F
from prefect import flow
from pydantic import Field

from components.config import (
    DistillConfig,
    DKDDistill,
    PipelineConfig,
    TeacherConfig,
    TeacherSource,
    TrainedTeacher,
    Variant,
    kinds,
    load_config,
)
from components.io import sha256_file
from components.losses import LossOutput, TeacherLogits, teacher_at
from components.methods import Method, method_of
from components.teacher_sources import Brought, ModelStore, Source, source_of
from components.teacher_sources.checkpoint import import_checkpoint
from components.teachers import InputSpec, TeacherError
from flows.pipeline import PipelineResult, run_pipeline
from flows.refs import ModelRef
from tests.conftest import RICH_OVERRIDES
from tests.flows.conftest import Store
from tests.helpers import pipeline_runs

# --- a method: logit matching (Ba and Caruana 2014) -------------------------------------------


class LogitMatching(Variant):
    """CE + weight * mean squared difference of the student's and the teacher's logits."""

    kind: Literal["logit_matching"] = "logit_matching"
    implementation = f"{__name__}:LOGIT_MATCHING"
    weight: float = Field(0.1, ge=0)


def logit_matching_loss(
    config: LogitMatching,
    student: torch.Tensor,
    teacher: TeacherLogits,
    targets: torch.Tensor,
    progress: float,
    label_smoothing: float,
    strong: object,
) -> LossOutput:
    mse = F.mse_loss(student, teacher_at(teacher, 1.0))
    ce = F.cross_entropy(student, targets, label_smoothing=label_smoothing)
    return LossOutput(ce + config.weight * mse, {"ce": ce.detach(), "kd": mse.detach()})


LOGIT_MATCHING = Method(
    two_views=False, loss_function=logit_matching_loss, reads=lambda config: ((1.0, False),)
)


# --- a teacher source: the teacher another work dir trained ----------------------------------


class WorkDirTeacher(Variant):
    """The newest teacher checkpoint another kd-pipeline work dir holds."""

    kind: Literal["work_dir"] = "work_dir"
    implementation = f"{__name__}:WORK_DIR_TEACHER"
    work_dir: Path


def _newest(work_dir: Path) -> Path:
    found = sorted((work_dir / "teacher").glob("*/model.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise TeacherError(f"{work_dir}: no trained teacher in it")
    return found[-1]


class WorkDirSource:
    trained_here = False

    def identity(self, source: WorkDirTeacher, models: ModelStore) -> dict[str, Any]:
        return {"sha256": sha256_file(_newest(source.work_dir))}

    def bring_in(
        self, source: WorkDirTeacher, spec: InputSpec, directory: Path, models: ModelStore
    ) -> Brought:
        path = directory / "model.pt"
        names = import_checkpoint(_newest(source.work_dir), None, path)
        return Brought(path, "checkpoint", names, f"work dir {source.work_dir}")

    def describe(self, source: WorkDirTeacher, brought: Brought) -> str:
        return f"teacher of {source.work_dir.name}"


WORK_DIR_TEACHER = WorkDirSource()


# --- the config with both kinds in its unions ---------------------------------------------------


class ExtendedTeacherConfig(TeacherConfig):
    source: Annotated[  # type: ignore[assignment]
        Union[(*kinds(TeacherSource), WorkDirTeacher)],
        Field(discriminator="kind"),
    ] = TrainedTeacher()


class ExtendedConfig(PipelineConfig):
    teacher: ExtendedTeacherConfig = ExtendedTeacherConfig()
    distill: Annotated[  # type: ignore[assignment]
        Union[(*kinds(DistillConfig), LogitMatching)],
        Field(discriminator="kind"),
    ] = DKDDistill(beta=2.0)


@flow(name="kd-pipeline-with-variants")
def extended_pipeline(config: PipelineConfig) -> PipelineResult:
    return run_pipeline(config, None)


def test_the_variants_are_found_through_their_protocols() -> None:
    assert isinstance(method_of(LogitMatching()), Method)
    assert isinstance(source_of(WorkDirTeacher(work_dir=Path("x"))), Source)
    config = load_config(
        None,
        [
            "distill={kind: logit_matching, weight: 0.5}",
            "teacher.source={kind: work_dir, work_dir: w}",
        ],
        schema=ExtendedConfig,
    )
    assert isinstance(config.distill, LogitMatching) and config.distill.weight == 0.5
    assert isinstance(config.teacher.source, WorkDirTeacher)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_method_and_a_teacher_source_defined_outside_run_a_pipeline(
    warm_store: Store, tmp_path: Path
) -> None:
    # given another work dir holding a trained teacher (the warm store's own)
    other = tmp_path / "other-work"
    shutil.copytree(warm_store.work / "teacher", other / "teacher")
    overrides = [
        *RICH_OVERRIDES,
        f"work_dir={warm_store.work}",
        f"teacher.source={{kind: work_dir, work_dir: {other}}}",
        "distill={kind: logit_matching, weight: 0.5}",
    ]
    config = load_config(None, overrides, schema=ExtendedConfig)
    # when the pipeline runs with both
    result = extended_pipeline(config)
    # then the teacher came from the other work dir, byte for byte: its cache is reused
    teacher = result.refs["teacher"]
    assert isinstance(teacher, ModelRef) and teacher.arch == "teacher of other-work"
    assert "logit-cache" in result.reused
    # and the student was distilled with the new method, exported and handed off
    _, (parent, children) = pipeline_runs(warm_store.client)
    student = children["student-kd"]
    assert student.data.params["distill.kind"] == "logit_matching"
    assert "train_kd_loss" in student.data.metrics
    assert children["teacher"].data.tags["teacher_source"] == "work_dir"
    assert {"onnx-export", "handoff", "report"} <= set(children)
    assert parent.info.status == "FINISHED"
