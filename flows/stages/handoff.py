"""``handoff``: decide on INT8, write the bundle for whoever deploys the model, log the ONNX
student as an MLflow model and register it as a new version under ``registry.alias``.

Not registered (and no alias moves): a model below the registry's floors on validation, or
one byte-identical to a registered version (the run records which version it equals).
Not cached: every run writes its own bundle and makes its own registry decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from components.calibration import calibrate
from components.data import Dataset, normalize, training_set_record
from components.handoff import (
    expected_image,
    handoff_card,
    mark_refused,
    registration_floor,
    self_check_indices,
    write_bundle,
)
from components.io import code_description
from components.onnx_export import onnx_session, run_onnx
from components.quantize import measure_int8
from components.teachers import InputSpec
from flows.refs import MODEL_STAGES, BenchmarkRef, DataRef, HandoffRef, ModelRef, OnnxRef
from flows.registration import TRAINING_EXAMPLES, register_challenger
from flows.stage import Outcome, Record, Stage, StageContext


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
            decision = measure_int8(
                model_path, ctx.work_dir / onnx.int8_model, dataset, config.export, config.promotion
            )
            int8_kept, int8_reason = decision.keep, decision.reason
            texts["int8_decision.json"] = decision.as_dict()
            if decision.accuracy is not None:
                metrics["int8_val_accuracy_difference"] = decision.accuracy.estimate
            if decision.latency is not None:
                metrics["int8_latency_ratio"] = decision.latency.estimate

        # 2. Calibration: a temperature fitted on validation, ECE before and after (the test
        #    split reported); it travels in the bundle for whoever thresholds on confidence.
        session = onnx_session(model_path)
        calibration = calibrate(
            *_logits_and_labels(session, dataset, "val"),
            *_logits_and_labels(session, dataset, "test"),
        )
        metrics |= {f"calibration.{k}": v for k, v in calibration.summary().items()}
        texts["calibration.json"] = calibration.as_dict()

        # 3. The bundle, with its model card.
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
            calibration=calibration,
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
            test_vector=(raw, np.asarray(test_labels)[chosen], run_onnx(session, inputs)),
            calibration=calibration,
        )

        # 4. The registry: a new version under the alias, with the record of its training
        #    examples; unless it is below a floor, or a version with the same bytes exists.
        training = training_set_record(dataset)
        below = registration_floor(
            student.correct(ctx.work_dir, dataset, "val"),
            control.correct(ctx.work_dir, dataset, "val"),
            config.registry,
        )
        same = ctx.tracker.registry.version_tagged(name, "onnx_sha256", exported.sha256)
        version: str | None
        if below is not None:
            version, registration = None, f"not registered: {below}"
            # Written for inspection, marked where a deployer looks: card, recipe, ONNX.
            mark_refused(bundle, below)
        elif same is not None:
            version, registration = same, f"not registered: byte-identical to version {same}"
        else:
            card = (bundle / "MODEL_CARD.md").read_text()  # as written: with its list of files
            # the bundle's model: the export with its temperature in the metadata
            version = register_challenger(
                ctx, dataset, bundle / "model.onnx", name, training, int8_reason, card
            )
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

    def summary(self, ref: HandoffRef, work_dir: Path) -> list[str]:
        registry = (
            f"Registered: models:/{ref.model_name}@{ref.alias} (version {ref.version})"
            if ref.registered
            else f"Registry: {ref.model_name} {ref.registration}"
        )
        return [f"Handoff bundle: {work_dir / ref.bundle} (INT8 {ref.int8_reason})", registry]


def _logits_and_labels(session: Any, dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ONNX student's logits on a split, and the split's labels."""
    images, labels = dataset.split(split)
    inputs = normalize(np.asarray(images), dataset.info).contiguous().numpy()
    return run_onnx(session, inputs), np.asarray(labels)
