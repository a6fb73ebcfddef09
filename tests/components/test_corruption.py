"""A changed byte or a truncated file in a checkpoint, a logit cache and an ONNX bundle: each is
detected on load with a message naming the file, and never used."""

import shutil
from pathlib import Path

import pytest
import torch

from components.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from components.config import AugmentConfig, CacheConfig
from components.data import Dataset
from components.io import sha256_file
from components.logit_cache import CacheError, CacheSpec, build_logit_cache, open_logit_cache
from components.models import build_model
from components.predict import Bundle


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {"flipped byte": flip_a_byte, "truncated": truncate}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_refused(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    model = build_model("cnn_tiny", 1, 10)
    sha = save_checkpoint(
        path, model, arch="cnn_tiny", in_channels=1, num_classes=10, config={}, metrics={},
        dataset_fingerprint="x",
    )  # fmt: skip
    DAMAGE[damage](path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path, expected_sha256=sha)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_logit_cache_is_refused_then_rebuilt(
    damage: str, tmp_path: Path, mnist_dataset: Dataset
) -> None:
    torch.manual_seed(0)
    teacher = build_model("cnn_tiny", 1, 10).eval()
    spec = CacheSpec.create(
        "a" * 64, mnist_dataset.info.fingerprint, AugmentConfig(), 0, CacheConfig(views=2)
    )
    built = build_logit_cache(teacher, spec, mnist_dataset, tmp_path, 500, torch.device("cpu"))
    logits = Path(built.path) / "logits.npy"
    good = logits.read_bytes()
    DAMAGE[damage](logits)
    with pytest.raises(CacheError, match=r"logits\.npy"):
        open_logit_cache(Path(built.path), expected_key=spec.key)
    rebuilt = build_logit_cache(teacher, spec, mnist_dataset, tmp_path, 500, torch.device("cpu"))
    assert not rebuilt.cache_hit and logits.read_bytes() == good


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", ["model.onnx", "preprocessing.json"])
def test_damaged_bundle_is_refused_before_loading(
    damage: str, name: str, bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copied-bundle"
    shutil.copytree(bundle, copy)
    Bundle(copy)  # intact: loads
    DAMAGE[damage](copy / name)
    with pytest.raises(ValueError, match=f"{copy / name}: corrupt"):
        Bundle(copy)
    assert sha256_file(bundle / name) != sha256_file(copy / name)
