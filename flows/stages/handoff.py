"""``handoff``: decide on INT8, write the bundle for whoever deploys the model, log the ONNX
student as an MLflow model and register it as a new version under ``registry.alias``.

Not registered (and no alias moves): a model below the registry's floors on validation, or
one byte-identical to a registered version (the run records which version it equals).
Not cached: every run writes its own bundle and makes its own registry decision.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from components.config import PipelineConfig
from components.data import Dataset, normalize, training_set_record
from components.handoff import expected_image, handoff_card, self_check_indices, write_bundle
from components.io import code_description
from components.onnx_export import onnx_session, run_onnx
from components.promotion import interleaved_rounds
from components.quantize import Int8Decision, int8_decision, onnx_correct
from components.teachers import InputSpec
from flows.refs import MODEL_STAGES, BenchmarkRef, DataRef, HandoffRef, ModelRef, OnnxRef
from flows.stage import Outcome, Record, Stage, StageContext
from flows.tracking import DATASET_TAG

TRAINING_EXAMPLES = "training_examples.json"  # on the handoff run: see training_set_record


def registration_floor(student: float, control: float, config: PipelineConfig) -> str | None:
    """Why a model with these validation accuracies is not registered (None: it may be)."""
    registry = config.registry
    if student < registry.min_val_accuracy:
        return (
            f"validation accuracy {student:.4f} is below registry.min_val_accuracy "
            f"{registry.min_val_accuracy:.4f}"
        )
    gain = registry.min_gain_over_control
    if gain is not None and student - control < gain:
        return (
            f"validation accuracy {student:.4f} minus its label-only control's {control:.4f} "
            f"is {student - control:+.4f}, below registry.min_gain_over_control {gain:+.4f}"
        )
    return None


class Handoff(Stage[HandoffRef]):
    name = "handoff"
    splits = ("val", "test")
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
        "dataset_name",
        "registered_model_name",
        "experiment_name",
    )
    needs = ("prepare-data", *MODEL_STAGES, "onnx-export", "benchmark")
    cached = False

    def run(self, ctx: StageContext) -> Outcome[HandoffRef]:
        config = ctx.config
        dataset = ctx.input("prepare-data", DataRef).load(ctx.work_dir)
        models = [ctx.input(stage, ModelRef) for stage in MODEL_STAGES]
        teacher, control, student = models
        onnx = ctx.input("onnx-export", OnnxRef)
        exported = onnx.export
        model_path = ctx.work_dir / exported.path
        bench = ctx.input("benchmark", BenchmarkRef)

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
            (stage, "pytorch", ref.test_accuracy, ref.parameters)
            for stage, ref in zip(MODEL_STAGES, models, strict=True)
        ]
        accuracy_rows.append(
            ("model.onnx", "onnxruntime float32", exported.onnx_test_accuracy, student.parameters)
        )
        if int8_kept and onnx.int8_test_accuracy is not None:  # the card lists bundle files only
            accuracy_rows.append(
                (
                    "model.int8.onnx",
                    "onnxruntime int8",
                    onnx.int8_test_accuracy,
                    student.parameters,
                )
            )
        registry = config.registry
        name = config.registered_model_name
        appearance = expected_image(dataset.info, config.dataset_name)
        card = handoff_card(
            appearance=appearance,
            model_name=name,
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
                "code": code_description(),
                "pipeline run": ctx.pipeline.parent_run_id,
                "teacher run": teacher.run_id,
                "student run": student.run_id,
                "ONNX sha256": exported.sha256,
            },
        )
        # The test vector: the first test image of each class, with the logits the pipeline's
        # own input path gives (write_bundle checks the bundle's recipe reproduces them).
        test_images, test_labels = dataset.split("test")
        chosen = self_check_indices(np.asarray(test_labels))
        raw = np.asarray(test_images[chosen])
        inputs = normalize(raw, dataset.info).contiguous().numpy()
        bundle = write_bundle(
            ctx.directory,
            model_path,
            ctx.work_dir / onnx.int8_model if int8_kept and onnx.int8_model else None,
            dataset.info,
            exported.parity,
            json.loads((ctx.work_dir / bench.json_path).read_text()),
            card,
            appearance=appearance,
            test_vector=(
                raw,
                np.asarray(test_labels)[chosen],
                run_onnx(onnx_session(model_path), inputs),
            ),
        )

        # 3. The registry: a new version under the alias, with the record of its training
        #    examples; unless it is below a floor, or a version with the same bytes exists.
        training = training_set_record(dataset)
        below = registration_floor(student.val_accuracy, control.val_accuracy, config)
        same = ctx.tracker.registry.version_tagged(name, "onnx_sha256", exported.sha256)
        version: str | None
        if below is not None:
            version, registration = None, f"not registered: {below}"
        elif same is not None:
            version, registration = same, f"not registered: byte-identical to version {same}"
        else:
            card = (bundle / "MODEL_CARD.md").read_text()  # as written: with its list of files
            version = self.register(ctx, dataset, model_path, name, training, int8_reason, card)
            registration = f"registered version {version} as @{registry.alias}"
        ctx.log.info("handoff bundle %s; %s %s; INT8 %s", bundle, name, registration, int8_reason)
        tags = {"model_name": name, "registration": registration, "int8": int8_reason}
        if version is not None:
            tags["model_version"] = version
        record = Record(
            metrics=metrics,
            tags=tags,
            files=[(bundle, "handoff")],
            # What the model was trained on, exactly: a later promotion removes these images
            # from the examples it compares this model on.
            texts={**texts, TRAINING_EXAMPLES: training},
        )
        ref = HandoffRef(
            bundle=ctx.relative(bundle),
            model_name=name,
            version=version,
            registered=below is None and same is None,
            registration=registration,
            alias=registry.alias,
            int8_kept=int8_kept,
            int8_reason=int8_reason,
        )
        return Outcome(ref, record)

    def register(
        self,
        ctx: StageContext,
        dataset: Dataset,
        model_path: Path,
        name: str,
        training: dict[str, Any],
        int8_reason: str,
        card: str,
    ) -> str:
        """The ONNX student as an MLflow logged model (onnx flavor, signature, input example;
        its figures linked to it), registered from it as a new version of ``name`` under the
        alias, with the model card as the version's description."""
        exported = ctx.input("onnx-export", OnnxRef).export
        student = ctx.input("student-kd", ModelRef)
        # Logged before the model: MLflow links the run's step-0 metrics to the logged model.
        ctx.tracker.runs.log_metrics(
            ctx.run_id,
            {
                "onnx_test_accuracy": exported.onnx_test_accuracy,
                "val_accuracy": student.val_accuracy,
                "parity_max_abs_diff": exported.max_abs_diff,
                "parity_top1_agreement": exported.top1_agreement,
            },
        )
        example = normalize(np.asarray(dataset.split("test")[0][:2]), dataset.info)
        example_input = example.contiguous().numpy()
        outputs = run_onnx(onnx_session(model_path), example_input)
        model = ctx.tracker.runs.log_onnx_model(ctx.run_id, model_path, example_input, outputs)
        # The pipeline's row in the runs table shows the model it handed off.
        ctx.tracker.runs.link_model(ctx.pipeline.parent_run_id, model[0])
        return ctx.tracker.registry.register(
            name,
            ctx.run_id,
            model,
            ctx.config.registry.alias,
            tags={
                "opset": exported.opset,
                "exporter": exported.exporter,
                "onnx_sha256": exported.sha256,
                "parity_max_abs_diff": f"{exported.max_abs_diff:.3g}",
                "parity_top1_agreement": f"{exported.top1_agreement:.6f}",
                "test_accuracy": f"{exported.onnx_test_accuracy:.6f}",
                DATASET_TAG: ctx.config.dataset_name,
                "dataset_fingerprint": dataset.info.fingerprint,
                "training_set_fingerprint": training["set_fingerprint"],
                "training_examples": f"runs:/{ctx.run_id}/{TRAINING_EXAMPLES}",
                "pipeline_run_id": ctx.pipeline.parent_run_id,
                "int8": int8_reason,
            },
            description=card,
            model_description=(
                f"Students distilled by kd-pipeline on dataset {ctx.config.dataset_name} "
                f"(experiment {ctx.config.experiment_name}), exported to ONNX. Each version's "
                "description is its model card; its tags record its parity, training examples "
                "and promotion decisions."
            ),
        )

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
        registry = (
            f"Registered: models:/{ref.model_name}@{ref.alias} (version {ref.version})"
            if ref.registered
            else f"Registry: {ref.model_name} {ref.registration}"
        )
        return [f"Handoff bundle: {work_dir / ref.bundle} (INT8 {ref.int8_reason})", registry]
