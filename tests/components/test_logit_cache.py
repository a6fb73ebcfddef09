import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import CacheConfig
from components.data import Dataset
from components.logit_cache import CacheError, build_logit_cache, cache_key, open_logit_cache
from components.models import build_model
from components.training import predict_logits

CPU = torch.device("cpu")


@pytest.fixture
def teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cnn_tiny", 1, 10).eval()


def test_cache_holds_the_teachers_logits_per_training_row(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    info = build_logit_cache(
        teacher, "a" * 64, mnist_dataset, tmp_path, CacheConfig(batch_size=300), CPU
    )
    logits, manifest = open_logit_cache(Path(info.path))
    assert isinstance(logits, np.memmap)
    assert logits.dtype == np.float16 and logits.shape == (4000, 10)
    assert not info.reused and info.bytes_per_sample == 20
    expected = predict_logits(teacher, mnist_dataset.split("train")[0], mnist_dataset, CPU)
    # row i is training sample i, whatever order a loader later visits them in
    rows = [0, 1234, 3999]
    assert np.allclose(logits[rows].astype(np.float32), expected[rows].numpy(), atol=1e-2)
    assert manifest["teacher_sha256"] == "a" * 64
    assert manifest["dataset_fingerprint"] == mnist_dataset.info.fingerprint
    assert manifest["shape"] == [4000, 10] and manifest["dtype"] == "float16"
    assert [p.name for p in tmp_path.iterdir()] == [info.key]  # no temporary left behind


def test_same_inputs_reuse_and_other_teacher_gets_another_key(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    first = build_logit_cache(teacher, "a" * 64, mnist_dataset, tmp_path, CacheConfig(), CPU)
    again = build_logit_cache(teacher, "a" * 64, mnist_dataset, tmp_path, CacheConfig(), CPU)
    assert again.reused and again.key == first.key
    fp = mnist_dataset.info.fingerprint
    assert cache_key("b" * 64, fp, CacheConfig()) != first.key
    assert cache_key("a" * 64, fp, CacheConfig(dtype="float32")) != first.key


def test_corrupted_cache_is_detected_and_rebuilt(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    info = build_logit_cache(teacher, "a" * 64, mnist_dataset, tmp_path, CacheConfig(), CPU)
    path = Path(info.path) / "logits.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=str(path)):
        open_logit_cache(Path(info.path))
    rebuilt = build_logit_cache(teacher, "a" * 64, mnist_dataset, tmp_path, CacheConfig(), CPU)
    assert not rebuilt.reused
    open_logit_cache(Path(rebuilt.path))  # verifies


def test_manifest_that_disagrees_with_the_file_is_refused(
    tmp_path: Path, mnist_dataset: Dataset, teacher: torch.nn.Module
) -> None:
    info = build_logit_cache(teacher, "a" * 64, mnist_dataset, tmp_path, CacheConfig(), CPU)
    manifest_path = Path(info.path) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shape"] = [10, 10]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="does not match manifest"):
        open_logit_cache(Path(info.path), verify=False)
