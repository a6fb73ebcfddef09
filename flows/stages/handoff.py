"""``handoff``: decide on INT8, write the bundle for whoever deploys the model, log the ONNX
student as an MLflow model and register it as a new version under ``registry.alias``.

Not cached: every run registers its own version and writes its own bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.benchmark import p50_of
from components.data import normalize
from components.handoff import handoff_card, write_bundle
from components.onnx_export import onnx_session, run_onnx
from components.quantize import int8_decision
from components.teachers import InputSpec
from flows.stage import Outcome, Record, Ref, Stage, StageContext
from flows.stages.benchmark import Benchmark, BenchmarkRef
from flows.stages.onnx_export import INT8_VARIANT, ONNX_VARIANT, OnnxExport, OnnxRef
from flows.stages.prepare_data import DataRef, PrepareData
from flows.stages.student_baseline import StudentBaseline
from flows.stages.student_kd import StudentKD
from flows.stages.teacher import Teacher
from flows.stages.training import ModelRef


class HandoffRef(Ref):
    bundle: str  # relative to the work dir
    model_name: str
    version: str
    alias: str
    int8_kept: bool
    int8_reason: str


class Handoff(Stage[HandoffRef]):
    name = "handoff"
    output = HandoffRef
    reads = (
        "registry",
        "export.int8_max_accuracy_drop",
        "benchmark.batch_sizes",
        "distill.kind",
        "data.kind",
    )
    needs = (PrepareData, Teacher, StudentBaseline, StudentKD, OnnxExport, Benchmark)
    cached = False

    def run(self, ctx: StageContext) -> Outcome[HandoffRef]:
        config = ctx.config
        dataset = ctx.input(PrepareData, DataRef).load(ctx.work_dir)
        models = [ctx.input(s, ModelRef) for s in (Teacher, StudentBaseline, StudentKD)]
        teacher, _, student = models
        onnx = ctx.input(OnnxExport, OnnxRef)
        exported = onnx.export
        bench = ctx.input(Benchmark, BenchmarkRef)

        # 1. INT8 earns its place only by the figures measured in this run.
        int8_kept, int8_reason = False, "not built (export.int8 is off)"
        metrics: dict[str, float] = {}
        if onnx.int8_model is not None and onnx.int8_test_accuracy is not None:
            batch = min(config.benchmark.batch_sizes)
            decision = int8_decision(
                exported.onnx_test_accuracy,
                onnx.int8_test_accuracy,
                p50_of(bench.results, ONNX_VARIANT, batch),
                p50_of(bench.results, INT8_VARIANT, batch),
                config.export.int8_max_accuracy_drop,
            )
            int8_kept, int8_reason = decision.keep, decision.reason
            metrics = {
                "int8_accuracy_drop": decision.accuracy_drop,
                "int8_latency_ratio": decision.latency_ratio,
            }

        # 2. The bundle, with its model card.
        accuracy_rows = [
            (stage.name, "pytorch", ref.test_accuracy, ref.parameters)
            for stage, ref in zip((Teacher, StudentBaseline, StudentKD), models, strict=True)
        ]
        accuracy_rows.append(
            ("model.onnx", "onnxruntime float32", exported.onnx_test_accuracy, student.parameters)
        )
        if onnx.int8_test_accuracy is not None:
            accuracy_rows.append(
                (
                    "model.int8.onnx",
                    "onnxruntime int8",
                    onnx.int8_test_accuracy,
                    student.parameters,
                )
            )
        registry = config.registry
        card = handoff_card(
            model_name=registry.model_name,
            method=config.distill.kind,
            teacher=(teacher.arch, teacher.parameters),
            student=(student.arch, student.parameters),
            accuracy_rows=accuracy_rows,
            benchmark_results=bench.results,
            int8_reason=int8_reason,
            export={
                "opset": exported.opset,
                "exporter": exported.exporter,
                "parity": exported.parity,
            },
            data=dataset.info,
            data_source=config.data.kind,
            recipes={
                "teacher": teacher.input_recipe(dataset.info),
                "student": InputSpec.of_data(dataset.info).describe(),
            },
            provenance={
                "pipeline run": ctx.pipeline.parent_run_id,
                "teacher run": teacher.run_id,
                "student run": student.run_id,
                "ONNX sha256": exported.sha256,
            },
        )
        model_path = ctx.work_dir / exported.path
        bundle = write_bundle(
            ctx.directory,
            model_path,
            ctx.work_dir / onnx.int8_model if int8_kept and onnx.int8_model else None,
            dataset.info,
            exported.parity,
            json.loads((ctx.work_dir / bench.json_path).read_text()),
            card,
        )

        # 3. The MLflow model (onnx flavor, signature, input example), registered under the alias.
        example = normalize(np.asarray(dataset.split("test")[0][:2]), dataset.info)
        example_input = example.contiguous().numpy()
        outputs = run_onnx(onnx_session(model_path), example_input)
        artifact = ctx.tracker.log_onnx_model(ctx.run_id, model_path, example_input, outputs)
        version = ctx.tracker.register(
            registry.model_name,
            ctx.run_id,
            artifact,
            registry.alias,
            tags={
                "opset": exported.opset,
                "exporter": exported.exporter,
                "onnx_sha256": exported.sha256,
                "parity_max_abs_diff": f"{exported.max_abs_diff:.3g}",
                "parity_top1_agreement": f"{exported.top1_agreement:.6f}",
                "test_accuracy": f"{exported.onnx_test_accuracy:.6f}",
                "dataset_fingerprint": dataset.info.fingerprint,
                "pipeline_run_id": ctx.pipeline.parent_run_id,
                "int8": int8_reason,
            },
        )
        ctx.log.info(
            "handoff bundle %s; registered %s version %s as @%s; INT8 %s",
            bundle,
            registry.model_name,
            version,
            registry.alias,
            int8_reason,
        )
        record = Record(
            metrics=metrics,
            tags={"model_name": registry.model_name, "model_version": version, "int8": int8_reason},
            files=[(bundle, "handoff")],
        )
        ref = HandoffRef(
            bundle=ctx.relative(bundle),
            model_name=registry.model_name,
            version=version,
            alias=registry.alias,
            int8_kept=int8_kept,
            int8_reason=int8_reason,
        )
        return Outcome(ref, record)

    def summary(self, ref: HandoffRef, work_dir: Path) -> list[str]:
        return [
            f"Handoff bundle: {work_dir / ref.bundle} (INT8 {ref.int8_reason})",
            f"Registered: models:/{ref.model_name}@{ref.alias} (version {ref.version})",
        ]
