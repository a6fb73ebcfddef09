"""A new stage, defined here and nowhere in the project: a per-class accuracy report of the
distilled student, inserted into the pipeline and run end to end with caching, reuse on rerun
and recomputation after its output is damaged (docs/extending.md walks through it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from prefect import flow

from components.checkpoint import load_checkpoint
from components.config import PipelineConfig, load_config
from components.inference import predict_logits
from components.io import sha256_file, write_json
from flows.cli import main
from flows.pipeline import PIPELINE, PipelineResult, run_pipeline
from flows.refs import DataRef, ModelRef
from flows.stage import Outcome, Record, Ref, Stage, StageContext, file_problem
from tests.conftest import RICH_OVERRIDES
from tests.flows.conftest import Store
from tests.helpers import flow_run_log, pipeline_runs


class PerClassRef(Ref):
    path: str  # per_class.json, relative to the work dir
    sha256: str
    worst_class: str

    def verify(self, work_dir: Path) -> str | None:
        return file_problem(work_dir, self.path, self.sha256)


class PerClassAccuracy(Stage[PerClassRef]):
    """Test accuracy of the distilled student on each class."""

    name = "per-class-accuracy"
    output = PerClassRef
    reads = ("device",)
    needs = ("prepare-data", "student-kd")

    def run(self, ctx: StageContext) -> Outcome[PerClassRef]:
        dataset = ctx.input("prepare-data", DataRef).load(ctx.work_dir)
        student = ctx.input("student-kd", ModelRef)
        model, _ = load_checkpoint(ctx.work_dir / student.checkpoint)
        images, labels = dataset.split("test")
        predicted = predict_logits(model, images, dataset, torch.device("cpu")).argmax(1).numpy()
        accuracy = {
            name: float((predicted[labels == c] == c).mean())
            for c, name in enumerate(dataset.info.class_names)
        }
        path = write_json(ctx.directory / "per_class.json", accuracy)
        worst = min(accuracy, key=accuracy.__getitem__)
        record = Record(
            metrics={f"test_accuracy.class_{name}": value for name, value in accuracy.items()},
            tags={"worst_class": worst},
            files=[(path, None)],
        )
        ref = PerClassRef(path=ctx.relative(path), sha256=sha256_file(path), worst_class=worst)
        return Outcome(ref, record)


# The project's pipeline with the new stage inserted before the report.
EXTENDED = (*PIPELINE[:-1], PerClassAccuracy(), PIPELINE[-1])


@flow(name="kd-pipeline-extended")
def extended_pipeline(config: PipelineConfig, force: list[str] | None = None) -> PipelineResult:
    return run_pipeline(config, force, EXTENDED)


def run(store: Store, force: list[str] | None = None) -> PipelineResult:
    config = load_config(None, [*RICH_OVERRIDES, f"work_dir={store.work}"])
    return extended_pipeline(config, force)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_stage_defined_outside_the_project_runs_caches_and_recomputes(
    warm_store: Store,
) -> None:
    # given the warm store (every project stage cached), when the extended pipeline runs
    first = run(warm_store)
    ref = first.refs["per-class-accuracy"]
    assert isinstance(ref, PerClassRef)
    per_class = json.loads((warm_store.work / ref.path).read_text())
    assert sorted(per_class) == [str(d) for d in range(10)]
    assert ref.path.startswith("per-class-accuracy/")  # its own folder, named after it
    # then the project's stages were reused and only the new one computed
    assert set(first.reused) == {"teacher", "logit-cache", "student-baseline", "student-kd",
                                 "onnx-export", "benchmark"}  # fmt: skip
    _, (parent, children) = pipeline_runs(warm_store.client)
    run_ = children["per-class-accuracy"]
    assert run_.info.status == "FINISHED" and run_.data.tags["worst_class"] == ref.worst_class
    assert run_.data.params["input.student-kd.run_id"] == first.refs["student-kd"].run_id
    assert run_.data.metrics[f"test_accuracy.class_{ref.worst_class}"] == min(per_class.values())
    assert parent.data.tags["computed_stages"] == "per-class-accuracy"

    # an unchanged rerun reuses it like any other stage
    second = run(warm_store)
    assert second.reused["per-class-accuracy"] == run_.info.run_id
    _, _, (_, children) = pipeline_runs(warm_store.client)
    assert children["per-class-accuracy"].data.tags["reused"] == "true"

    # a damaged output is recomputed, with a warning naming the file
    path = warm_store.work / ref.path
    path.write_text("{}")
    third = run(warm_store)
    assert "per-class-accuracy" not in third.reused
    assert json.loads(path.read_text()) == per_class  # the same figures again
    *_, (parent, _) = pipeline_runs(warm_store.client)
    assert f"{path} changed since it was cached" in flow_run_log(parent)

    # and it can be forced by name like the project's stages
    forced = run(warm_store, ["per-class-accuracy"])
    assert "per-class-accuracy" not in forced.reused and "student-kd" in forced.reused


def test_the_project_cli_knows_only_its_own_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--force-stage", "per-class-accuracy"]) == 2
    assert "unknown stage(s) per-class-accuracy" in capsys.readouterr().err
