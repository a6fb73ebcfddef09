"""``onnx-export``: the distilled student to ONNX, accepted only through the structural and
parity gates (components/onnx_export.py), plus its INT8 twin when ``export.int8`` is on.

A parity failure fails the stage loudly, with the report of which inputs failed and how far
kept on its MLflow run; nothing is handed on.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from components.checkpoint import load_checkpoint
from components.io import sha256_file
from components.onnx_export import ParityError, export_metadata, export_onnx
from components.quantize import onnx_accuracy, quantize_int8
from flows.refs import INT8_VARIANT, ONNX_VARIANT, DataRef, ModelRef, OnnxRef
from flows.stage import Outcome, Record, Stage, StageContext, Variant


class OnnxExport(Stage[OnnxRef]):
    name = "onnx-export"
    splits = ("test",)
    output = OnnxRef
    reads = ("export", "seed")
    needs = ("prepare-data", "teacher", "student-kd")
    variants = (
        Variant(ONNX_VARIANT, "onnxruntime", accuracy="onnx_test_accuracy", size="model_bytes"),
        Variant(
            INT8_VARIANT, "onnxruntime", accuracy="int8_test_accuracy", size="int8_model_bytes"
        ),
    )

    def run(self, ctx: StageContext) -> Outcome[OnnxRef]:
        config = ctx.config.export
        data = ctx.input("prepare-data", DataRef)
        teacher = ctx.input("teacher", ModelRef)
        student = ctx.input("student-kd", ModelRef)
        dataset = data.load(ctx.work_dir)
        model, _ = load_checkpoint(
            ctx.work_dir / student.checkpoint, "cpu", expected_sha256=student.sha256
        )
        metadata = export_metadata(
            dataset.info,
            {
                "teacher_run_id": teacher.run_id,
                "student_run_id": student.run_id,
                "student_checkpoint_sha256": student.sha256,
                "student_test_accuracy": f"{student.test_accuracy:.6f}",
                "teacher_input_recipe": teacher.input_recipe(dataset.info),
            },
        )
        path = ctx.directory / "model.onnx"
        try:
            result = export_onnx(model, dataset, path, config, metadata)
        except ParityError as err:
            # What failed and how far, for whoever investigates: then fail loudly.
            ctx.tracker.runs.log_dict(
                ctx.run_id, {"error": str(err), "reports": err.reports}, "parity.json"
            )
            raise
        metrics = {
            "max_abs_diff": result.max_abs_diff,
            "top1_agreement": result.top1_agreement,
            "torch_test_accuracy": result.torch_test_accuracy,
            "onnx_test_accuracy": result.onnx_test_accuracy,
            "model_bytes": result.size_bytes,
        }
        files: list[tuple[Path, str | None]] = [(path, "onnx")]
        int8_path, int8_accuracy = None, None
        if config.int8:
            int8_path = quantize_int8(
                path,
                path.with_name("model.int8.onnx"),
                dataset,
                config.calibration_images,
                ctx.config.seed,
            )
            int8_accuracy = onnx_accuracy(int8_path, dataset)
            metrics |= {
                "int8_test_accuracy": int8_accuracy,
                "int8_model_bytes": int8_path.stat().st_size,
            }
            files.append((int8_path, "onnx"))
        ctx.log.info(
            "ONNX (%s exporter, opset %d): max |diff| %.2e, top-1 agreement %.4f",
            result.exporter,
            result.opset,
            result.max_abs_diff,
            result.top1_agreement,
        )
        record = Record(
            params={"student.sha256": student.sha256, "model.parameters": student.parameters},
            metrics=metrics,
            tags={"exporter": result.exporter, "opset": result.opset, "onnx_sha256": result.sha256},
            files=files,
            texts={"parity.json": asdict(result)},
        )
        ref = OnnxRef(
            export=replace(result, path=ctx.relative(path)),
            parameters=student.parameters,
            int8_model=ctx.relative(int8_path) if int8_path else None,
            int8_sha256=sha256_file(int8_path) if int8_path else None,
            int8_test_accuracy=int8_accuracy,
        )
        return Outcome(ref, record)

    def summary(self, ref: OnnxRef, work_dir: Path) -> list[str]:
        return [f"ONNX model: {work_dir / ref.export.path}"]
