"""Helpers of the pipeline tests: command lines, and reading runs back from MLflow and Prefect."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from components.config import PipelineConfig
from flows.pipeline import PIPELINE
from flows.stage import cached_names
from tests.conftest import TINY_OVERRIDES

STAGES = [stage.name for stage in PIPELINE]  # every stage is a child run of the pipeline run
CACHED = cached_names(PIPELINE)
MODEL = PipelineConfig().registered_model_name  # the MNIST runs' registered model


def run_args(work: Path, *overrides: str, base: tuple[str, ...] = TINY_OVERRIDES) -> list[str]:
    """``kd run`` on the tiny config in ``work``, for ``flows.cli.main``."""
    pairs = [*base, f"work_dir={work}", *overrides]
    return ["run"] + [a for o in pairs for a in ("--set", o)]


def kd_command(work: Path, *overrides: str) -> list[str]:
    """The same as a separate ``kd run`` process."""
    return [sys.executable, "-m", "flows.cli", *run_args(work, *overrides)]


def process_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """A ``kd`` process's environment: this store, and the session's Prefect server (a
    process of its own would spend ~10 s starting a temporary one)."""
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        **extra,
    }


def pipeline_runs(client: MlflowClient) -> list[tuple[Run, dict[str, Run]]]:
    """Parent runs, oldest first, each with its children by name."""
    experiment = client.get_experiment_by_name(PipelineConfig().experiment_name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [
        r
        for r in runs
        if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("pipeline") == "kd-pipeline"
    ]
    return [
        (
            parent,
            {
                r.info.run_name: r
                for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
            },
        )
        for parent in parents
    ]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def flow_run_log(parent: Run) -> str:
    """What the pipeline run logged to Prefect (the messages the UI shows), read back from the
    server: the console may be someone else's captured stream by now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    flow_run_id = parent.data.tags["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(log.message for log in logs)


def one(items: Any) -> Any:
    (item,) = items
    return item


def benchmark(name: str) -> Any:
    """``benchmarks/<name>.py`` as a module, to call its ``main(argv)`` as users run it,
    without paying for another interpreter's imports."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def quadrant_images(root: Path, per_class: int, start: int = 0) -> Path:
    """An ImageFolder of four classes of 8x8 grey images, told apart by which quadrant is
    bright: learnable in an epoch or two. Files ``start`` .. ``start + per_class - 1`` of each
    class, their noise drawn from a generator seeded by ``start`` (a call with another
    ``start`` adds new images)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(start)
    for label in range(4):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            pixels = rng.integers(0, 60, size=(8, 8)).astype(np.uint8)
            y, x = divmod(label, 2)
            pixels[4 * y : 4 * y + 4, 4 * x : 4 * x + 4] += 180
            Image.fromarray(pixels, mode="L").save(root / f"c{label}" / f"{i}.png")
    return root
