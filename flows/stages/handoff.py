"""``handoff``: decide on INT8, write the bundle for whoever deploys the model, log the ONNX
student as an MLflow model and register it as a new version under ``registry.alias``.

Not cached: every run registers its own version and writes its own bundle.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from components.data import Dataset, normalize, training_set_record
from components.handoff import handoff_card, write_bundle
from components.onnx_export import onnx_session, run_onnx
from components.promotion import interleaved_rounds
from components.quantize import Int8Decision, int8_decision, onnx_correct
from components.teachers import InputSpec
from flows.stage import Outcome, Record, Ref, Stage, StageContext
from flows.stages.benchmark import Benchmark, BenchmarkRef
from flows.stages.onnx_export import OnnxExport, OnnxRef
from flows.stages.prepare_data import DataRef, PrepareData
from flows.stages.student_baseline import StudentBaseline
from flows.stages.student_kd import StudentKD
from flows.stages.teacher import Teacher
from flows.stages.training import ModelRef

TRAINING_EXAMPLES = "training_examples.json"  # on the handoff run: see training_set_record


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
        "export.int8_latency_margin",
        "promotion.threads",
        "promotion.warmup",
        "promotion.iterations",
        "promotion.rounds",
        "promotion.confidence",
        "promotion.resamples",
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
        model_path = ctx.work_dir / exported.path
        bench = ctx.input(Benchmark, BenchmarkRef)

        # 1. INT8 earns its place only by figures measured now, on validation, timed as
        #    promotion times (the same threads, interleaved rounds).
        int8_kept, int8_reason = False, "not built (export.int8 is off)"
        metrics: dict[str, float] = {}
        texts: dict[str, str | dict[str, Any]] = {}
        if onnx.int8_model is not None:
            decision = self.decide_int8(ctx, dataset, model_path, ctx.work_dir / onnx.int8_model)
            int8_kept, int8_reason = decision.keep, decision.reason
            texts["int8_decision.json"] = decision.as_dict()
            if decision.accuracy is not None:
                metrics["int8_val_accuracy_difference"] = decision.accuracy.estimate
            if decision.latency is not None:
                metrics["int8_latency_ratio"] = decision.latency.estimate

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
        bundle = write_bundle(
            ctx.directory,
            model_path,
            ctx.work_dir / onnx.int8_model if int8_kept and onnx.int8_model else None,
            dataset.info,
            exported.parity,
            json.loads((ctx.work_dir / bench.json_path).read_text()),
            card,
        )

        # 3. The MLflow model (onnx flavor, signature, input example), registered under the
        #    alias with the record of its training examples.
        training = training_set_record(dataset)
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
                "training_set_fingerprint": training["set_fingerprint"],
                "training_examples": f"runs:/{ctx.run_id}/{TRAINING_EXAMPLES}",
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
            # What the model was trained on, exactly: a later promotion removes these images
            # from the examples it compares this model on.
            texts={**texts, TRAINING_EXAMPLES: training},
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

    def decide_int8(
        self, ctx: StageContext, dataset: Dataset, fp32: Path, int8: Path
    ) -> Int8Decision:
        policy, export = ctx.config.promotion, ctx.config.export
        images, _ = dataset.split("val")
        one = normalize(np.asarray(images[:1]), dataset.info).contiguous().numpy()
        calls = {}
        for name, path in (("fp32", fp32), ("int8", int8)):
            session = onnx_session(path, threads=policy.threads)
            calls[name] = functools.partial(session.run, ["logits"], {"input": one})
        rounds = interleaved_rounds(calls, policy.warmup, policy.iterations, policy.rounds)
        return int8_decision(
            onnx_correct(fp32, dataset, "val"),
            onnx_correct(int8, dataset, "val"),
            rounds["fp32"],
            rounds["int8"],
            export.int8_max_accuracy_drop,
            export.int8_latency_margin,
            policy.confidence,
            policy.resamples,
        )

    def summary(self, ref: HandoffRef, work_dir: Path) -> list[str]:
        return [
            f"Handoff bundle: {work_dir / ref.bundle} (INT8 {ref.int8_reason})",
            f"Registered: models:/{ref.model_name}@{ref.alias} (version {ref.version})",
        ]
