"""``report``: this run's summary, curves and confusion matrix, and the comparison with the
runs before it, on the parent run (where a person opening the pipeline run looks first) and
as a Prefect table artifact ``kd-comparison``.

The summary and the comparison are read back from MLflow through the stages' declared
variants (flows/compare.py), so they show every model the pipeline produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.data import Dataset, normalize
from components.latency import p50_of
from components.onnx_export import onnx_session, run_onnx
from components.recipes import control_name
from components.report import confusion_chart, confusion_matrix, summary_markdown, training_curves
from components.stats import Verdict, verdict
from flows.refs import MODEL_STAGES, BenchmarkRef, DataRef, ModelRef, OnnxRef, ReportRef
from flows.stage import Outcome, Record, Stage, StageContext

RUNS_IN_REPORT = 5  # this run and the four before it


class Report(Stage[ReportRef]):
    name = "report"
    splits = ("test",)
    output = ReportRef
    reads = ("experiment_name", "dataset_name", "student.baseline")
    needs = ("prepare-data", *MODEL_STAGES, "onnx-export", "benchmark")
    cached = False

    def run(self, ctx: StageContext) -> Outcome[ReportRef]:
        # Here, not at the top: the stage list is imported by the pre-flight checks, which
        # run before MLflow (read back by compare) and Prefect (the table) are loaded.
        from flows.compare import compare_runs, variant_rows, write_comparison
        from flows.runner import publish_table

        out_dir = ctx.directory
        dataset = ctx.input("prepare-data", DataRef).load(ctx.work_dir)
        trained = {stage: ctx.input(stage, ModelRef) for stage in MODEL_STAGES}
        exported = ctx.input("onnx-export", OnnxRef)
        bench = ctx.input("benchmark", BenchmarkRef)
        histories = {
            name: json.loads((ctx.work_dir / ref.history).read_text())
            for name, ref in trained.items()
        }
        curves = training_curves(histories, out_dir / "training_curves.png")

        # The confusion matrix of the model that is handed off: the ONNX export, run by ORT.
        images, labels = dataset.split("test")
        inputs = normalize(np.asarray(images), dataset.info).contiguous().numpy()
        model = ctx.work_dir / exported.export.path
        predictions = run_onnx(onnx_session(model), inputs).argmax(1)
        matrix = confusion_matrix(np.asarray(labels), predictions, dataset.info.num_classes)
        confusion = confusion_chart(
            matrix,
            dataset.info.class_names,
            out_dir / "confusion_matrix.png",
            title=f"student-kd (ONNX), test split: accuracy {np.trace(matrix) / matrix.sum():.4f}",
        )

        # This run's summary, and the comparison with the last finished runs before it.
        parent = ctx.tracker.runs.run(ctx.pipeline.parent_run_id)
        rows = variant_rows(ctx.tracker, parent, ctx.stages)
        # each model's latency in the runtime its row names (a teacher is timed in both)
        p50 = {
            (row.variant, r["batch_size"]): p50_of(
                bench.results, row.variant, r["batch_size"], runtime=row.runtime
            )
            for row in rows
            for r in bench.results
        }
        # What distillation bought: the distilled student against its control on test,
        # reported (validation made every decision before this).
        teacher, baseline, student = trained.values()
        bought = _verdict(ctx.work_dir, dataset, teacher, baseline, student)
        summary = summary_markdown(
            rows, {key: value for key, value in p50.items() if value is not None}
        )
        recipe = ctx.config.student.baseline
        summary += (
            f"\n{bought.describe('test')}\n"
            f"Control: {control_name(recipe.views, recipe.label_smoothing)} "
            f"(student.baseline), chosen by {recipe.chosen_by}.\n"
        )
        experiment = ctx.config.experiment_name
        # Runs of this dataset only: another dataset's figures are not comparable.
        data_name = ctx.config.dataset_name
        earlier = ctx.tracker.runs.pipeline_runs(
            experiment, last=RUNS_IN_REPORT - 1, dataset=data_name
        )
        run_ids = [parent.run_id, *(r.run_id for r in earlier)]
        rows = compare_runs(ctx.pipeline.tracking_uri, experiment, ctx.stages, run_ids=run_ids)
        files = write_comparison(rows, out_dir)
        comparison = files["markdown"].read_text()
        publish_table(
            "kd-comparison",
            [{k: ("" if v is None else v) for k, v in row.__dict__.items()} for row in rows],
            f"kd-pipeline: the last {RUNS_IN_REPORT} runs of experiment {experiment!r} on "
            f"dataset {data_name}, newest first (MLflow run {parent.run_id}).",
        )
        ctx.log.info("comparison with recent runs:\n%s", comparison)

        gap_closed = bought.gap_closed
        parent_record = Record(
            metrics={
                "kd_vs_control_test_diff": bought.difference.estimate,
                "kd_vs_control_test_diff_low": bought.difference.interval[0],
                "kd_vs_control_test_diff_high": bought.difference.interval[1],
                "kd_vs_control_p_value": (
                    1.0 if bought.difference.p_value is None else bought.difference.p_value
                ),
                "teacher_test_accuracy": teacher.test_accuracy,
                "baseline_test_accuracy": baseline.test_accuracy,
                "kd_test_accuracy": student.test_accuracy,
                "onnx_test_accuracy": exported.export.onnx_test_accuracy,
                "compression_ratio": teacher.parameters / student.parameters,
                # Not logged when the control is as good as the teacher: no gap, no share.
                **({} if gap_closed is None else {"teacher_gap_closed": gap_closed}),
            },
            files=[
                (curves, "figures"),
                (confusion, "figures"),
                *((path, "comparison") for path in files.values()),
            ],
            texts={"summary.md": summary},
        )
        ref = ReportRef(
            directory=ctx.relative(out_dir),
            summary_markdown=summary,
            comparison_markdown=comparison,
            files={
                "training_curves": ctx.relative(curves),
                "confusion_matrix": ctx.relative(confusion),
                **{k: ctx.relative(v) for k, v in files.items()},
            },
        )
        record = Record(metrics={"runs_compared": len(run_ids)}, texts={"summary.md": summary})
        return Outcome(ref, record, parent=parent_record)

    def summary(self, ref: ReportRef, work_dir: Path) -> list[str]:
        return [f"Report and comparison: {work_dir / ref.directory}"]


def _verdict(
    work_dir: Path, dataset: Dataset, teacher: ModelRef, control: ModelRef, distilled: ModelRef
) -> Verdict:
    """The two students' predictions on the test split, paired image by image."""
    return verdict(
        distilled.correct(work_dir, dataset, "test"),
        control.correct(work_dir, dataset, "test"),
        teacher.test_accuracy,
    )
