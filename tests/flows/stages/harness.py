"""Stages run alone: a stage's context built from tiny artifacts, and ``Stage.run`` called on
it directly, without Prefect and without a pipeline run around it. The upstream references
come from the project's own stages run the same way, in the pipeline's order, on a tiny image
folder, so a test of one stage's logic pays seconds, not a pipeline run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from components.config import PipelineConfig, load_config
from flows.pipeline import PIPELINE
from flows.runner import log_record
from flows.stage import ConfigView, Outcome, PipelineContext, Ref, Stage, StageContext
from flows.tracking import PIPELINE_TAG, Tracker

# The tiny pipeline over a folder of 8x8 images (tests.helpers.quadrant_images).
TINY_STAGE_CONFIG = (
    "data.kind=image_folder",
    "data.image_size=8",
    "data.channels=1",
    "teacher.model.name=cnn_small",
    "teacher.train.epochs=1",
    "student.model.name=cnn_tiny",
    "student.train.epochs=1",
    "cache.views=2",
    "export.calibration_images=16",
    "benchmark.batch_sizes=[1]",
    "benchmark.threads=[1]",
    "benchmark.warmup=1",
    "benchmark.iterations=5",
    "promotion.warmup=1",
    "promotion.iterations=10",
    "promotion.rounds=3",
    "registry.min_gain_over_control=null",
)


@dataclass
class StageHarness:
    """A work dir and an MLflow store with a parent run, and the references handed on so far."""

    work: Path
    tracker: Tracker
    pipeline: PipelineContext
    refs: dict[str, Ref] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path, tracking_uri: str) -> StageHarness:
        tracker = Tracker(tracking_uri)
        experiment = tracker.runs.experiment_id(PipelineConfig().experiment_name)
        parent = tracker.runs.create_run(experiment, "stage-harness", tags=dict([PIPELINE_TAG]))
        work = root / "work"
        return cls(work, tracker, PipelineContext(tracking_uri, experiment, parent, str(work)))

    def config(self, images: Path, *overrides: str) -> PipelineConfig:
        return load_config(
            None, [*TINY_STAGE_CONFIG, f"data.root={images}", f"work_dir={self.work}", *overrides]
        )

    def context(self, stage: Stage[Any], config: PipelineConfig) -> StageContext:
        """What ``Stage.run`` gets in a pipeline: its config view, its inputs (by the names it
        needs), its folder and a child run of the parent run."""
        inputs = {name: self.refs[name] for name in stage.needs}
        fingerprint = stage.fingerprint(config, inputs)
        run_id = self.tracker.runs.create_run(
            self.pipeline.experiment_id, stage.name, self.pipeline.parent_run_id
        )
        declared = frozenset((*stage.reads, *stage.settings))
        return StageContext(
            stage=stage,
            config=cast(PipelineConfig, ConfigView(config, declared, stage.name)),
            inputs=inputs,
            fingerprint=fingerprint,
            run_name=stage.name,
            run_id=run_id,
            pipeline=self.pipeline,
            stages=PIPELINE,
            tracker=self.tracker,
            log=logging.getLogger(f"kd.stage.{stage.name}"),
        )

    def run(self, stage: Stage[Any], config: PipelineConfig) -> Outcome[Any]:
        """Run the stage alone, log its record to its run, keep its reference."""
        ctx = self.context(stage, config)
        with self.tracker.runs.running(ctx.run_id):
            outcome = stage.run(ctx)
            log_record(self.tracker, ctx.run_id, outcome.record, model_name=stage.name)
        outcome.ref = outcome.ref.model_copy(update={"run_id": ctx.run_id})
        self.refs[stage.name] = outcome.ref
        return outcome

    def run_upstream(self, until: str, config: PipelineConfig) -> None:
        """The project's stages before ``until``, in the pipeline's order."""
        for stage in PIPELINE:
            if stage.name == until:
                return
            if stage.name not in self.refs:
                self.run(stage, config)
        raise ValueError(f"no stage {until!r} in the pipeline")


def stage(name: str) -> Stage[Any]:
    return next(s for s in PIPELINE if s.name == name)


def new_parent(harness: StageHarness) -> StageHarness:
    """The same work dir, store and references under a new pipeline (parent) run: what a
    second pipeline run would see."""
    parent = harness.tracker.runs.create_run(
        harness.pipeline.experiment_id, "stage-harness", tags=dict([PIPELINE_TAG])
    )
    pipeline = PipelineContext(
        harness.pipeline.tracking_uri, harness.pipeline.experiment_id, parent, str(harness.work)
    )
    return StageHarness(harness.work, harness.tracker, pipeline, dict(harness.refs))
