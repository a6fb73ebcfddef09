"""Registering the handed-off model: the ONNX student as an MLflow logged model, and a new
version of the registered model from it, under the challenger alias (the handoff stage
decides whether to register; promotion decides whether it becomes the champion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.data import Dataset, normalize
from components.onnx_export import onnx_session, run_onnx
from flows.refs import ONNX_VARIANT, ModelRef, OnnxRef
from flows.stage import StageContext
from flows.tracking import DATASET_TAG

TRAINING_EXAMPLES = "training_examples.json"  # on the handoff run: see training_set_record


def register_challenger(
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
    model = ctx.tracker.runs.log_onnx_model(
        ctx.run_id, model_path, example_input, outputs, name=ONNX_VARIANT
    )
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
