"""`kd predict` with a real bundle on PNG files the test writes; ONNX Runtime only."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.config import ExportConfig
from components.data import Dataset
from components.handoff import write_bundle
from components.inference import predict_logits
from components.models import build_model
from components.onnx_export import export_onnx
from components.predict import Bundle, preprocess_file, self_check
from flows.cli import main
from tests.components.conftest import vector_of


def write_pngs(directory: Path, dataset: Dataset, count: int) -> list[Path]:
    images, _ = dataset.split("test")
    paths = []
    for i in range(count):
        path = directory / f"digit{i}.png"
        Image.fromarray(np.asarray(images[i][0])).save(path)
        paths.append(path)
    return paths


def test_bundle_predictions_match_the_model(
    tmp_path: Path, bundle: Path, mnist_dataset: Dataset
) -> None:
    paths = write_pngs(tmp_path, mnist_dataset, 4)
    results = Bundle(bundle).classify(paths, top_k=3)
    # the bundle's own preprocessing reproduces the pipeline's input exactly
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 1, 10).eval()  # the same weights as the bundle's
    logits = predict_logits(
        model, mnist_dataset.split("test")[0][:4], mnist_dataset, torch.device("cpu")
    )
    probs = torch.softmax(logits, 1)
    for i, result in enumerate(results):
        assert result.error is None and len(result.top) == 3
        best_label, best_p = result.top[0]
        assert best_label == str(int(probs[i].argmax())) and best_p == pytest.approx(
            float(probs[i].max()), abs=1e-4
        )
        assert [p for _, p in result.top] == sorted((p for _, p in result.top), reverse=True)


def test_kd_predict_reports_bad_files_and_classifies_the_rest_without_torch(
    tmp_path: Path, bundle: Path, mnist_dataset: Dataset
) -> None:
    good = write_pngs(tmp_path, mnist_dataset, 2)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    script = (
        "import sys; from flows.cli import main; rc = main(sys.argv[1:]); "
        "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)"
    )
    args = [
        "predict",
        str(bundle),
        str(good[0]),
        str(corrupt),
        str(text),
        str(good[1]),
        "--top-k",
        "2",
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "torch imported: False" in done.stdout
    lines = [line for line in done.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert [line.split(":")[0] for line in lines] == [str(good[0]), str(good[1])]
    assert "corrupt.png" in done.stderr and "notes.txt" in done.stderr
    assert "Traceback" not in done.stderr


def test_bundle_files(bundle: Path, mnist_dataset: Dataset) -> None:
    prep = json.loads((bundle / "preprocessing.json").read_text())
    assert prep["mean"] == mnist_dataset.info.mean and prep["color_mode"] == "L"
    assert json.loads((bundle / "labels.json").read_text())["3"] == "3"
    with pytest.raises(ValueError, match="not a readable handoff bundle"):
        Bundle(bundle / "missing")


def test_the_bundle_checks_itself_and_a_deployment_that_prepares_images_otherwise_fails(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check = self_check(bundle)
    assert check.passed and check.images == 10 and check.max_abs_diff < 1e-4
    vector = json.loads((bundle / "self_check.json").read_text())
    assert [item["label"] for item in vector["images"]] == [str(d) for d in range(10)]
    assert main(["predict", str(bundle), "--self-check"]) == 0
    assert "self-check passed: 10 images" in capsys.readouterr().out

    # a deployment feeding black-on-white digits, or forgetting to normalise, is caught
    prep = json.loads((bundle / "preprocessing.json").read_text())
    assert "white (light) strokes on a black background" in prep["expected_image"]

    def inverted(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            flipped = Image.fromarray(255 - np.asarray(image.convert("L")))
        scratch = path.with_name("inverted.png")
        flipped.save(scratch)
        try:
            return preprocess_file(scratch, prep)
        finally:
            scratch.unlink()

    def unnormalised(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), np.float32)[None] / 255

    for wrong in (inverted, unnormalised):
        failed = self_check(bundle, wrong)
        assert not failed.passed and len(failed.failures) == 10, wrong.__name__


def test_a_bundle_whose_recipe_does_not_reproduce_the_pipeline_is_never_written(
    tmp_path: Path, mnist_dataset: Dataset
) -> None:
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 1, 10).eval()
    result = export_onnx(model, mnist_dataset, tmp_path / "m.onnx", ExportConfig(int8=False), {})
    with pytest.raises(ValueError, match="does not reproduce the pipeline's logits"):
        write_bundle(
            tmp_path / "bundle",
            Path(result.path),
            None,
            mnist_dataset.info,
            result.parity,
            {},
            "# card\n",
            appearance="digits",
            test_vector=vector_of(mnist_dataset, Path(result.path), shift=0.5),
        )
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]
