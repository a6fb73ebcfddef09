"""``kd compare`` and the run report's comparison: model variants of pipeline runs side by side.

Every figure is read back from MLflow (flows/tracking/), so the comparison works the same on
the local SQLite store and on a remote server. Which variants a run has, and where their
figures live, comes from the stages' declared ``variants``: a new stage that produces a model
shows up here without a change to this module.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.io import write_text
from components.report import (
    VariantRow,
    accuracy_latency_scatter,
    comparison_markdown,
    with_relative_figures,
    write_comparison_csv,
)
from flows.stage import Stage
from flows.tracking import DATASET_TAG, Tracker, TrackingError
from flows.tracking.runs import RunRecord

_LATENCY_KEY = re.compile(
    r"^(?P<variant>.+)\.(?P<runtime>pytorch|onnxruntime)\.threads(?P<threads>\d+)"
    r"\.batch(?P<batch>\d+)\.(?P<stat>p50_ms|images_per_s)$"
)


Latency = dict[tuple[str, str, int, str], tuple[int, float]]


def _latency(benchmark: RunRecord | None) -> Latency:
    """(variant, runtime, batch, stat) -> (threads, value), on the most threads measured for
    that variant in that runtime."""
    if benchmark is None:
        return {}
    best: Latency = {}
    for key, value in benchmark.metrics.items():
        match = _LATENCY_KEY.match(key)
        if match is None:
            continue
        slot = (match["variant"], match["runtime"], int(match["batch"]), match["stat"])
        threads = int(match["threads"])
        if slot not in best or threads > best[slot][0]:
            best[slot] = (threads, value)
    return best


def _teacher_p50(latency: Latency, runtime: str, threads: int | None) -> float | None:
    """The teacher's p50 at batch 1 in ``runtime`` on ``threads`` threads, when measured."""
    found = latency.get(("teacher", runtime, 1, "p50_ms"))
    return found[1] if found is not None and found[0] == threads else None


def _int(value: float | str | None) -> int | None:
    return None if value is None else int(float(value))


def _runs_of(stage: Stage[Any], children: dict[str, RunRecord]) -> list[RunRecord]:
    """The stage's run, then its named instances (``student-kd[...]`` of a sweep)."""
    named = sorted(n for n in children if n.startswith(f"{stage.name}["))
    plain = [stage.name] if stage.name in children else []
    return [children[n] for n in plain + named]


def variant_rows(
    tracker: Tracker, parent: RunRecord, stages: Sequence[Stage[Any]]
) -> list[VariantRow]:
    """The model variants of one pipeline (or sweep) run, in pipeline order."""
    children = tracker.runs.children(parent)
    latency = _latency(children.get("benchmark"))
    data = children.get("prepare-data")
    test_n = _int(data.params.get("dataset.test_size")) if data else None
    run_name = parent.name or parent.run_id[:8]
    rows = []
    for stage in stages:
        for variant in stage.variants:
            for run in _runs_of(stage, children):
                if "{run}" not in variant.name and run.name != stage.name:
                    continue
                accuracy = run.metrics.get(variant.accuracy)
                if accuracy is None:
                    continue  # not produced by this run (INT8 switched off)
                name = variant.name.format(run=run.name)
                runtime = run.params.get(variant.runtime_param, variant.runtime)
                p50 = latency.get((name, runtime, 1, "p50_ms"))
                throughput = latency.get((name, runtime, 32, "images_per_s"))
                threads = p50[0] if p50 is not None else None
                rows.append(
                    VariantRow(
                        run_id=parent.run_id,
                        run_name=run_name,
                        variant=name,
                        runtime=runtime,
                        test_accuracy=accuracy,
                        parameters=_int(run.params.get(variant.parameters)),
                        size_bytes=_int(run.metrics.get(variant.size)),
                        p50_ms_batch1=p50[1] if p50 is not None else None,
                        images_per_s_batch32=throughput[1] if throughput is not None else None,
                        test_n=test_n,
                        threads=threads,
                        teacher_p50_ms_batch1=_teacher_p50(latency, runtime, threads),
                    )
                )
    return rows


def compare_runs(
    tracking_uri: str,
    experiment_name: str,
    stages: Sequence[Stage[Any]],
    last: int | None = None,
    run_ids: Sequence[str] = (),
    dataset: str | None = None,
    all_datasets: bool = False,
) -> list[VariantRow]:
    """Rows of the chosen runs (newest first), with speed-up and accuracy kept vs the teacher.

    Without ``run_ids``: the last runs of one dataset (``dataset``, else the newest run's),
    or of every dataset with ``all_datasets``. Runs of more than one dataset are labelled
    with theirs. Raises ``TrackingError`` for an unknown experiment or run."""
    tracker = Tracker(tracking_uri)
    if not run_ids and not all_datasets and dataset is None:
        newest = tracker.runs.pipeline_runs(experiment_name, 1)
        dataset = newest[0].tags.get(DATASET_TAG) if newest else None
    runs = tracker.runs.pipeline_runs(
        experiment_name, last, run_ids, dataset=None if all_datasets else dataset
    )
    if not runs:
        which = f" on dataset {dataset}" if dataset else ""
        raise TrackingError(f"experiment {experiment_name!r}: no kd-pipeline runs{which} yet")
    label = len({run.tags.get(DATASET_TAG) for run in runs}) > 1
    rows = []
    for run in runs:
        for row in variant_rows(tracker, run, stages):
            if label:
                row = dataclasses.replace(
                    row, run_name=f"{row.run_name} ({run.tags.get(DATASET_TAG, 'dataset?')})"
                )
            rows.append(row)
    return with_relative_figures(rows)


def write_comparison(rows: list[VariantRow], out_dir: Path) -> dict[str, Path]:
    """The table as markdown and CSV, and the accuracy-latency scatter as PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "comparison.md"
    write_text(markdown, comparison_markdown(rows))
    return {
        "markdown": markdown,
        "csv": write_comparison_csv(rows, out_dir / "comparison.csv"),
        "png": accuracy_latency_scatter(rows, out_dir / "accuracy_vs_latency.png"),
    }
