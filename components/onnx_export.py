"""Export a model to ONNX with a dynamic batch dimension, and refuse it unless it matches
PyTorch on the whole test split.

The dynamo exporter (torch.onnx.export(dynamo=True), needs onnxscript) is tried first; when it
fails or its model fails the parity gate, the TorchScript exporter is tried. Known dynamo
regressions have produced models with wrong outputs, so no export is trusted without the gate.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from components.config import ExportConfig
from components.data import Dataset, DatasetInfo, normalize
from components.inference import predict_logits
from components.io import atomic_path, git_commit, sha256_file

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_metadata(info: DatasetInfo, provenance: dict[str, str]) -> dict[str, str]:
    """What travels inside the ONNX file: labels, the input recipe, versions, the code's
    commit, and ``provenance`` (run ids, hashes, accuracies of whoever exported it)."""
    return {
        "class_labels": json.dumps(info.class_names),
        "input_shape": json.dumps(["batch", info.in_channels, *info.image_size]),
        "input_layout": "NCHW float32, pixels scaled to [0,1] then (x - mean) / std",
        "normalization_mean": json.dumps(info.mean),
        "normalization_std": json.dumps(info.std),
        "dataset_fingerprint": info.fingerprint,
        **provenance,
        "versions": json.dumps(
            {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
        ),
        "git_commit": git_commit(),
    }


class ParityError(RuntimeError):
    """No exported model passed the gates; ``reports`` holds each exporter's parity figures."""

    def __init__(self, message: str, reports: dict[str, dict[str, Any]] | None = None):
        super().__init__(message)
        self.reports = reports or {}


@dataclass(frozen=True)
class ExportResult:
    path: str
    sha256: str
    size_bytes: int
    exporter: str
    opset: int
    max_abs_diff: float
    top1_agreement: float
    torch_test_accuracy: float
    onnx_test_accuracy: float
    attempts: dict[str, str]  # exporter -> "ok" or why it was rejected
    parity: dict[str, Any]  # the full parity report of the accepted model


def export_graph(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamo: bool = True
) -> None:
    """The ONNX graph of ``model`` on inputs shaped like ``example``, batch dimension dynamic;
    no gates (``export_onnx`` is the gated export of a student)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        else:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
            )


def check_structure(path: Path, batch_sizes: tuple[int, ...], sample: np.ndarray) -> None:
    """The structural gate: checker, strict shape inference, symbolic batch, runs at sizes."""
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param:
        raise ValueError(f"batch dimension is fixed at {batch_dim.dim_value}, expected symbolic")
    session = onnx_session(path)
    for size in batch_sizes:
        batch = np.resize(sample, (size, *sample.shape[1:])).astype(np.float32)
        out = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        if out.shape[0] != size:
            raise ValueError(f"batch of {size} gave {out.shape[0]} outputs")


def onnx_session(path: Path | str, threads: int | None = None) -> ort.InferenceSession:
    """``threads``: a session for timing, on exactly that many threads (spinning between calls,
    as a latency-bound server would); None: a session for throughput work (parity, scoring),
    on all cores, whose idle threads sleep instead of spinning."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    else:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, batch: np.ndarray, batch_size: int = 512) -> np.ndarray:
    outputs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: batch[s : s + batch_size]})[0]
        for s in range(0, len(batch), batch_size)
    ]
    return np.concatenate(outputs)


def parity_report(
    produced: np.ndarray, reference: np.ndarray, labels: np.ndarray, config: ExportConfig
) -> dict[str, Any]:
    """How far the exported model's logits are from PyTorch's, and whether that passes."""
    diff = np.abs(produced - reference)
    allowed = config.max_abs_diff + config.rtol * np.abs(reference)
    failing = np.flatnonzero((diff > allowed).any(axis=1))
    agreement = float((produced.argmax(1) == reference.argmax(1)).mean())
    torch_accuracy = float((reference.argmax(1) == labels).mean())
    onnx_accuracy = float((produced.argmax(1) == labels).mean())
    problems = []
    if len(failing):
        problems.append(
            f"{len(failing)} test inputs exceed |diff| <= {config.max_abs_diff} + "
            f"{config.rtol} * |logit| (e.g. #{failing[:10].tolist()})"
        )
    if agreement < config.min_top1_agreement:
        problems.append(f"top-1 agreement {agreement:.4f} < {config.min_top1_agreement}")
    if abs(onnx_accuracy - torch_accuracy) > config.max_accuracy_change:
        problems.append(f"accuracy {torch_accuracy:.4f} -> {onnx_accuracy:.4f}")
    return {
        "passed": not problems,
        "problems": problems,
        "inputs": len(reference),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "worst_input": int(diff.max(axis=1).argmax()),
        "failing_inputs": failing[:100].tolist(),
        "top1_agreement": agreement,
        "torch_test_accuracy": torch_accuracy,
        "onnx_test_accuracy": onnx_accuracy,
        "limits": {
            "max_abs_diff": config.max_abs_diff,
            "rtol": config.rtol,
            "min_top1_agreement": config.min_top1_agreement,
            "max_accuracy_change": config.max_accuracy_change,
        },
    }


def export_onnx(
    model: nn.Module,
    dataset: Dataset,
    path: Path,
    config: ExportConfig,
    metadata: dict[str, str],
) -> ExportResult:
    """Export, pass the structural and parity gates on the test split, write ``path``."""
    test_images, test_labels = dataset.split("test")
    reference = predict_logits(model.cpu(), test_images, dataset, torch.device("cpu")).numpy()
    # The exporter traces plain NCHW-contiguous weights and inputs (the ONNX layout).
    model = model.to(memory_format=torch.contiguous_format).eval()
    inputs = normalize(np.asarray(test_images), dataset.info).contiguous()
    # A batch of 2: with 1, the exporter may specialise the batch dimension to a constant.
    example = inputs[:2] if len(inputs) >= 2 else inputs.repeat(2, 1, 1, 1)
    attempts: dict[str, str] = {}
    reports: dict[str, dict[str, Any]] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as scratch:
        for exporter in ("dynamo", "torchscript"):
            candidate = Path(scratch) / f"{exporter}.onnx"
            try:
                export_graph(model, example, candidate, config.opset_version, exporter == "dynamo")
                check_structure(candidate, config.check_batch_sizes, inputs[:64].numpy())
                produced = run_onnx(onnx_session(candidate), inputs.numpy())
            except Exception as err:
                attempts[exporter] = f"failed: {type(err).__name__}: {err}"[:500]
                continue
            report = parity_report(produced, reference, test_labels, config)
            reports[exporter] = report
            if not report["passed"]:
                attempts[exporter] = "parity: " + "; ".join(report["problems"])
                continue
            attempts[exporter] = "ok"
            proto = onnx.load(str(candidate))
            parity_meta = {
                "exporter": exporter,
                "parity_max_abs_diff": f"{report['max_abs_diff']:.3g}",
                "parity_top1_agreement": f"{report['top1_agreement']:.6f}",
                "onnx_test_accuracy": f"{report['onnx_test_accuracy']:.6f}",
            }
            for key, value in {**metadata, **parity_meta}.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, str(value)
            with atomic_path(path) as tmp:
                onnx.save(proto, str(tmp))
            opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            return ExportResult(
                path=str(path),
                sha256=sha256_file(path),
                size_bytes=path.stat().st_size,
                exporter=exporter,
                opset=int(opset),
                max_abs_diff=report["max_abs_diff"],
                top1_agreement=report["top1_agreement"],
                torch_test_accuracy=report["torch_test_accuracy"],
                onnx_test_accuracy=report["onnx_test_accuracy"],
                attempts=attempts,
                parity=report,
            )
    raise ParityError(
        f"no exporter produced an ONNX model that passes the gates: {attempts}", reports
    )
