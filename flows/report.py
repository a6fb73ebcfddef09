"""The report stage and ``kd compare``: model variants of pipeline runs side by side.

Every figure is read back from MLflow through its public client (runs, params, metrics),
so the comparison works the same on the local SQLite store and on a remote server. The
pipeline's own report adds two pictures of this run: training curves and the distilled
student's confusion matrix on the test split.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from components.config import PipelineConfig
from components.data import DatasetInfo, load_dataset, normalize
from components.io import write_text
from components.onnx_export import onnx_session, run_onnx
from components.report import (
    VariantRow,
    accuracy_latency_scatter,
    comparison_markdown,
    confusion_chart,
    confusion_matrix,
    training_curves,
    with_relative_figures,
    write_comparison_csv,
)
from flows.tasks import ModelRef, OnnxRef, Ref, RunContext
from flows.tracking import Tracker

PIPELINE_TAG = ("pipeline", "kd-pipeline")  # set on every parent run
RUNS_IN_REPORT = 5  # the pipeline's own report: this run and the four before it
_LATENCY_KEY = re.compile(
    r"^(?P<variant>.+)\.(?P<runtime>pytorch|onnxruntime)\.threads(?P<threads>\d+)"
    r"\.batch(?P<batch>\d+)\.(?P<stat>p50_ms|images_per_s)$"
)


class CompareError(ValueError):
    """No such experiment or run, or a run that is not a kd-pipeline run."""


def pipeline_runs(
    client: MlflowClient,
    experiment_name: str,
    last: int | None = None,
    run_ids: Sequence[str] = (),
) -> list[Run]:
    """The chosen parent runs, newest first: the given ids, else the last ``last``."""
    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                run = client.get_run(run_id)
            except Exception as err:  # MLflow raises its own exception for an unknown id
                raise CompareError(f"run {run_id}: not found ({err})") from err
            if run.data.tags.get(PIPELINE_TAG[0]) != PIPELINE_TAG[1]:
                raise CompareError(f"run {run_id}: not a kd-pipeline parent run")
            runs.append(run)
        return runs
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise CompareError(f"experiment {experiment_name!r}: not found on this tracking server")
    # Finished runs only: a failed run's figures may stop anywhere.
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.{PIPELINE_TAG[0]} = '{PIPELINE_TAG[1]}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=last or 1000,
    )


def _children(client: MlflowClient, parent: Run) -> dict[str, Run]:
    """Child runs by name; of two with one name (a retried stage), the later one."""
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return {child.data.tags.get(MLFLOW_RUN_NAME, ""): child for child in children}


def _latency(benchmark: Run | None) -> dict[tuple[str, int, str], float]:
    """(variant, batch, stat) -> value, on the most threads measured for that variant."""
    if benchmark is None:
        return {}
    best: dict[tuple[str, int, str], tuple[int, float]] = {}
    for key, value in benchmark.data.metrics.items():
        match = _LATENCY_KEY.match(key)
        if match is None:
            continue
        slot = (match["variant"], int(match["batch"]), match["stat"])
        threads = int(match["threads"])
        if slot not in best or threads > best[slot][0]:
            best[slot] = (threads, value)
    return {slot: value for slot, (_, value) in best.items()}


def _int(value: float | str | None) -> int | None:
    return None if value is None else int(float(value))


def variant_rows(client: MlflowClient, parent: Run) -> list[VariantRow]:
    """The model variants of one pipeline (or sweep) run, with what MLflow holds for each."""
    children = _children(client, parent)
    latency = _latency(children.get("benchmark"))
    run_name = parent.data.tags.get(MLFLOW_RUN_NAME, parent.info.run_id[:8])
    rows = []

    def add(
        variant: str,
        runtime: str,
        accuracy: float | None,
        parameters: str | None,
        size: float | None,
    ) -> None:
        rows.append(
            VariantRow(
                run_id=parent.info.run_id,
                run_name=run_name,
                variant=variant,
                runtime=runtime,
                test_accuracy=accuracy,
                parameters=_int(parameters),
                size_bytes=_int(size),
                p50_ms_batch1=latency.get((variant, 1, "p50_ms")),
                images_per_s_batch32=latency.get((variant, 32, "images_per_s")),
            )
        )

    for role in ("teacher", "student-baseline", "student-kd"):
        run = children.get(role)
        if run is None:
            continue
        metrics, params = run.data.metrics, run.data.params
        add(
            role,
            "pytorch",
            metrics.get("test_accuracy"),
            params.get("model.parameters"),
            metrics.get("checkpoint_bytes"),
        )
    # A sweep's distilled students, one per setting (kd sweep).
    for name in sorted(n for n in children if n.startswith("student-kd[")):
        run = children[name]
        add(
            name,
            "pytorch",
            run.data.metrics.get("test_accuracy"),
            run.data.params.get("model.parameters"),
            run.data.metrics.get("checkpoint_bytes"),
        )
    export = children.get("onnx-export")
    if export is not None:
        student = children.get("student-kd")
        parameters = student.data.params.get("model.parameters") if student else None
        metrics = export.data.metrics
        add(
            "student-kd-onnx",
            "onnxruntime",
            metrics.get("onnx_test_accuracy"),
            parameters,
            metrics.get("model_bytes"),
        )
        if "int8_test_accuracy" in metrics:
            add(
                "student-kd-onnx-int8",
                "onnxruntime",
                metrics.get("int8_test_accuracy"),
                parameters,
                metrics.get("int8_model_bytes"),
            )
    return rows


def compare_runs(
    tracking_uri: str,
    experiment_name: str,
    last: int | None = None,
    run_ids: Sequence[str] = (),
) -> list[VariantRow]:
    """Rows of the chosen runs (newest first), with speed-up and accuracy kept vs the teacher."""
    client = MlflowClient(tracking_uri)
    runs = pipeline_runs(client, experiment_name, last, run_ids)
    if not runs:
        raise CompareError(f"experiment {experiment_name!r}: no kd-pipeline runs yet")
    return with_relative_figures([row for run in runs for row in variant_rows(client, run)])


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


class ReportRef(Ref):
    directory: str
    comparison_markdown: str
    files: dict[str, str]


@task(name="report", cache_policy=NO_CACHE)
def report(
    config: PipelineConfig,
    ctx: RunContext,
    data: DatasetInfo,
    models: list[ModelRef],
    exported: OnnxRef,
) -> ReportRef:
    """Curves, confusion matrix and the comparison with recent runs, on the parent run."""
    tracker = Tracker(ctx.tracking_uri)
    out_dir = Path(ctx.work_dir) / "reports" / ctx.parent_run_id
    histories = {m.role: json.loads(Path(m.history).read_text()) for m in models}
    curves = training_curves(histories, out_dir / "training_curves.png")

    # The confusion matrix of the model that is handed off: the ONNX export, run by ORT.
    dataset = load_dataset(data.path)
    images, labels = dataset.split("test")
    inputs = normalize(np.asarray(images), data).contiguous().numpy()
    predictions = run_onnx(onnx_session(exported.export.path), inputs).argmax(1)
    matrix = confusion_matrix(np.asarray(labels), predictions, data.num_classes)
    confusion = confusion_chart(
        matrix,
        data.class_names,
        out_dir / "confusion_matrix.png",
        title=f"student-kd (ONNX), test split: accuracy {np.trace(matrix) / matrix.sum():.4f}",
    )

    # This run (still running while it reports) and the last finished ones before it.
    earlier = pipeline_runs(
        MlflowClient(ctx.tracking_uri), config.experiment_name, last=RUNS_IN_REPORT - 1
    )
    run_ids = [ctx.parent_run_id, *(r.info.run_id for r in earlier)]
    rows = compare_runs(ctx.tracking_uri, config.experiment_name, run_ids=run_ids)
    files = write_comparison(rows, out_dir)
    for path in (curves, confusion):
        tracker.log_artifact(ctx.parent_run_id, path, "figures")
    for path in files.values():
        tracker.log_artifact(ctx.parent_run_id, path, "comparison")
    markdown = files["markdown"].read_text()
    create_table_artifact(
        key="kd-comparison",
        table=[{k: ("" if v is None else v) for k, v in row.__dict__.items()} for row in rows],
        description=f"kd-pipeline: the last {RUNS_IN_REPORT} runs of experiment "
        f"{config.experiment_name!r}, newest first (MLflow run {ctx.parent_run_id}).",
    )
    get_run_logger().info("comparison with recent runs:\n%s", markdown)
    return ReportRef(
        directory=str(out_dir),
        comparison_markdown=markdown,
        files={
            "training_curves": str(curves),
            "confusion_matrix": str(confusion),
            **{k: str(v) for k, v in files.items()},
        },
    )
