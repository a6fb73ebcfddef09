"""Classify image files with a handoff bundle, using ONNX Runtime alone.

Deliberately free of torch and of the rest of the pipeline: this is what the person who
deploys the model runs, with nothing but the bundle, numpy, Pillow and onnxruntime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from components.io import sha256_file  # standard library only: no torch in a deployment


@dataclass(frozen=True)
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (label, probability), best first
    error: str | None = None


SELF_CHECK = "self_check.json"  # the bundle's test vector: raw images and their logits


def preprocess_file(path: Path, prep: dict) -> np.ndarray:
    """One image file -> (C, H, W) float32, as the bundle's preprocessing.json says."""
    size = prep["resize"]
    with Image.open(path) as image:
        resized = image.convert(prep["color_mode"]).resize(
            (size["width"], size["height"]), Image.Resampling.BILINEAR
        )
        pixels = np.asarray(resized, dtype=np.float32)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    mean = np.asarray(prep["mean"], np.float32)[:, None, None]
    std = np.asarray(prep["std"], np.float32)[:, None, None]
    return (pixels * np.float32(prep["scale"]) - mean) / std


@dataclass(frozen=True)
class SelfCheck:
    """A deployment against the bundle's test vector."""

    images: int
    max_abs_diff: float
    top1_agreement: float
    failures: list[str]  # one line per image whose logits are out of tolerance

    @property
    def passed(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        verdict = "passed" if self.passed else f"FAILED on {len(self.failures)} image(s)"
        return (
            f"self-check {verdict}: {self.images} images, max |logit diff| "
            f"{self.max_abs_diff:.2e}, top-1 agreement {self.top1_agreement:.3f}"
        )


def self_check(
    directory: Path, preprocess: Callable[[Path], np.ndarray] | None = None
) -> SelfCheck:
    """Decode, preprocess and run the bundle's test images as a deployment would (here:
    this module's ``preprocess_file``, or your own ``preprocess``) and compare the logits
    with those the pipeline recorded for the same images."""
    bundle = Bundle(directory)
    vector = json.loads((directory / SELF_CHECK).read_text())
    prepare = preprocess or bundle.preprocess
    inputs = np.stack([prepare(directory / item["file"]) for item in vector["images"]])
    got = bundle.logits(inputs.astype(np.float32))
    expected = np.asarray([item["logits"] for item in vector["images"]], np.float32)
    atol, rtol = vector["tolerance"]["atol"], vector["tolerance"]["rtol"]
    diff = np.abs(got - expected)
    failures = [
        f"{item['file']}: max |logit diff| {row.max():.2e} > {atol} + {rtol} * |expected|"
        for item, row, bad in zip(
            vector["images"], diff, (diff > atol + rtol * np.abs(expected)).any(1), strict=True
        )
        if bad
    ]
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    return SelfCheck(len(inputs), float(diff.max()), agreement, failures)


def verify_bundle(directory: Path) -> None:
    """Every file against the bundle's checksums.json: a changed byte or a truncated file is
    refused, naming the file, before anything is loaded."""
    try:
        sums = json.loads((directory / "checksums.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{directory}: not a readable handoff bundle ({err})") from err
    for name, expected in sums.items():
        path = directory / name
        try:
            actual = sha256_file(path)
        except OSError as err:
            raise ValueError(f"{path}: missing from the bundle ({err})") from err
        if actual != expected:
            raise ValueError(f"{path}: corrupt (sha256 differs from checksums.json); refused")


class Bundle:
    def __init__(self, directory: Path) -> None:
        verify_bundle(directory)
        try:
            self.prep = json.loads((directory / "preprocessing.json").read_text())
            labels = json.loads((directory / "labels.json").read_text())
            self.labels = [labels[str(i)] for i in range(len(labels))]
            self.session = ort.InferenceSession(
                str(directory / "model.onnx"), providers=["CPUExecutionProvider"]
            )
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{directory}: not a readable handoff bundle ({err})") from err

    @property
    def refused(self) -> str | None:
        """Why the pipeline refused this model (a registry floor, no promotion), if it did:
        the bundle is kept for inspection, not for deployment."""
        status = self.prep.get("kd_status")  # components/handoff.py's REFUSED_KEY
        return str(status) if status else None

    def preprocess(self, path: Path) -> np.ndarray:
        """One image file -> (C, H, W) float32, exactly as preprocessing.json says."""
        return preprocess_file(path, self.prep)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"input": inputs})[0]

    def classify(self, paths: list[Path], top_k: int = 3) -> list[Prediction]:
        """Top-k classes per file; an unreadable file gets its error, the others still run."""
        results: list[Prediction | None] = [None] * len(paths)
        batch, where = [], []
        for i, path in enumerate(paths):
            try:
                batch.append(self.preprocess(path))
                where.append(i)
            except (OSError, UnidentifiedImageError, ValueError) as err:
                reason = (
                    "not an image Pillow can read"
                    if isinstance(err, UnidentifiedImageError)
                    else str(err)
                )
                results[i] = Prediction(str(path), [], f"{path}: {reason}")
        if batch:
            # the temperature fitted on validation (the bundle's calibration), when it has one
            logits = self.logits(np.stack(batch)) / float(self.prep.get("temperature", 1.0))
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = shifted / shifted.sum(axis=1, keepdims=True)
            for row, i in enumerate(where):
                best = np.argsort(-probs[row])[:top_k]
                top = [(self.labels[c], float(probs[row, c])) for c in best]
                results[i] = Prediction(str(paths[i]), top)
        return [r for r in results if r is not None]
