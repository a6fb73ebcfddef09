"""The upstream of the stages under test, made once per session by the project's own stages
run alone on tiny images; each test gets a copy of it (work dir and MLflow store)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.stage import PipelineContext, Ref
from flows.stages import PIPELINE
from flows.tracking import Tracker
from tests.flows.stages.harness import StageHarness
from tests.helpers import quadrant_images

REF_TYPES: dict[str, type[Ref]] = {stage.name: stage.output for stage in PIPELINE}


@dataclass(frozen=True)
class Upstream:
    """A snapshot: the store, the work dir, the images and the references up to handoff."""

    root: Path

    def copy(self, destination: Path) -> tuple[StageHarness, Path]:
        shutil.copytree(self.root, destination)
        meta = json.loads((destination / "harness.json").read_text())
        uri = f"sqlite:///{destination / 'mlflow.db'}"
        harness = StageHarness(
            destination / "work",
            Tracker(uri),
            PipelineContext(uri, meta["experiment"], meta["parent"], str(destination / "work")),
            {name: REF_TYPES[name].model_validate(ref) for name, ref in meta["refs"].items()},
        )
        return harness, destination / "images"


@pytest.fixture(scope="session")
def upstream(empty_mlflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Upstream:
    root = tmp_path_factory.mktemp("stage-upstream") / "snapshot"
    root.mkdir()
    shutil.copyfile(empty_mlflow_db, root / "mlflow.db")
    images = quadrant_images(root / "images", per_class=40)
    harness = StageHarness.create(root, f"sqlite:///{root / 'mlflow.db'}")
    harness.run_upstream("handoff", harness.config(images))
    (root / "harness.json").write_text(
        json.dumps(
            {
                "experiment": harness.pipeline.experiment_id,
                "parent": harness.pipeline.parent_run_id,
                "refs": {k: v.model_dump(mode="json") for k, v in harness.refs.items()},
            }
        )
    )
    return Upstream(root)


@pytest.fixture
def staged(upstream: Upstream, tmp_path: Path) -> tuple[StageHarness, Path]:
    """This test's own copy of the upstream: a harness and the tiny images."""
    return upstream.copy(tmp_path / "copy")
