"""Export a model to ONNX with a dynamic batch dimension, and refuse it unless it matches
PyTorch on the whole test split.

The dynamo exporter (torch.onnx.export(dynamo=True), needs onnxscript) is tried first; when it
fails or its model fails the parity gate, the TorchScript exporter is tried. Known dynamo
regressions have produced models with wrong outputs, so no export is trusted without the gate.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from components.config import ExportConfig
from components.data import Dataset, normalize
from components.io import atomic_path, sha256_file
from components.training import predict_logits

INPUT_NAME, OUTPUT_NAME = "input", "logits"


class ParityError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the configured tolerance."""


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


def _export(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamo: bool) -> None:
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


def _check_structure(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.dim_param:
        raise ValueError(f"batch dimension is fixed at {batch_dim.dim_value}, expected symbolic")


def onnx_session(path: Path | str) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, batch: np.ndarray, batch_size: int = 512) -> np.ndarray:
    outputs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: batch[s : s + batch_size]})[0]
        for s in range(0, len(batch), batch_size)
    ]
    return np.concatenate(outputs)


def export_onnx(
    model: nn.Module,
    dataset: Dataset,
    path: Path,
    config: ExportConfig,
    metadata: dict[str, str],
) -> ExportResult:
    """Export, check structure and parity on the test split, write ``path`` atomically."""
    test_images, test_labels = dataset.split("test")
    reference = predict_logits(model.cpu(), test_images, dataset, torch.device("cpu")).numpy()
    # The exporter traces plain NCHW-contiguous weights and inputs (the ONNX layout).
    model = model.to(memory_format=torch.contiguous_format).eval()
    inputs = normalize(np.asarray(test_images), dataset.info).contiguous()
    # A batch of 2: with 1, the exporter may specialise the batch dimension to a constant.
    example = inputs[:2] if len(inputs) >= 2 else inputs.repeat(2, 1, 1, 1)
    attempts: dict[str, str] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-export-") as scratch:
        for exporter in ("dynamo", "torchscript"):
            candidate = Path(scratch) / f"{exporter}.onnx"
            try:
                _export(model, example, candidate, config.opset_version, exporter == "dynamo")
                _check_structure(candidate)
                produced = run_onnx(onnx_session(candidate), inputs.numpy())
            except Exception as err:
                attempts[exporter] = f"failed: {type(err).__name__}: {err}"[:500]
                continue
            diff = np.abs(produced - reference)
            agreement = float((produced.argmax(1) == reference.argmax(1)).mean())
            if diff.max() > config.max_abs_diff or agreement < config.min_top1_agreement:
                attempts[exporter] = (
                    f"parity: max |diff| {diff.max():.3g} (limit {config.max_abs_diff}), "
                    f"top-1 agreement {agreement:.4f} (min {config.min_top1_agreement}), "
                    f"worst test sample #{int(diff.max(axis=1).argmax())}"
                )
                continue
            attempts[exporter] = "ok"
            proto = onnx.load(str(candidate))
            for key, value in {**metadata, "exporter": exporter}.items():
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
                max_abs_diff=float(diff.max()),
                top1_agreement=agreement,
                torch_test_accuracy=float((reference.argmax(1) == test_labels).mean()),
                onnx_test_accuracy=float((produced.argmax(1) == test_labels).mean()),
                attempts=attempts,
            )
    raise ParityError(f"no exporter produced an ONNX model that passes the gates: {attempts}")
