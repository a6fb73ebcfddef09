"""torchvision's datasets, read by torchvision from tiny files in their real formats that the
tests write."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets

from components.config import TorchvisionSource
from components.data_sources import (
    DataError,
    check_source,
    load_source,
    source_sample,
    source_signature,
    source_version,
)

RNG = np.random.default_rng(0)


def write_idx_mnist(raw: Path, prefix: str, n_per_class: int, size: int = 28) -> np.ndarray:
    """MNIST's idx format: big-endian magic, dims, then uint8 data (what torchvision reads)."""
    raw.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10, dtype=np.uint8), n_per_class)
    images = RNG.integers(0, 256, (len(labels), size, size), dtype=np.uint8)
    with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">iiii", 2051, len(labels), size, size) + images.tobytes())
    with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">ii", 2049, len(labels)) + labels.tobytes())
    return images


def write_cifar(root: Path, folder: str, files: list[str], label_key: str, n_classes: int) -> None:
    """CIFAR's python format: pickled dicts of (N, 3072) uint8 rows and label lists."""
    base = root / folder
    base.mkdir(parents=True)
    for name in files:
        labels = list(np.repeat(np.arange(n_classes), 2))
        data = RNG.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f)


@pytest.fixture
def no_cifar_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test writes its own tiny CIFAR files; torchvision's md5 list is for the real ones.
    for cls in (datasets.CIFAR10, datasets.CIFAR100):
        monkeypatch.setattr(cls, "train_list", [[f, None] for f, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[f, None] for f, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": None})


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_torchvision_mnist_formats_read_from_idx_files(tmp_path: Path, name: str) -> None:
    train = write_idx_mnist(tmp_path / name / "raw", "train", n_per_class=4)
    write_idx_mnist(tmp_path / name / "raw", "t10k", n_per_class=1)
    data = load_source(TorchvisionSource(name=name, root=tmp_path))
    assert data.images.shape == (50, 1, 28, 28)
    assert np.array_equal(data.images[:40, 0], train)
    assert data.official_test is not None and data.official_test.sum() == 10
    assert len(data.class_names) == 10


@pytest.mark.usefixtures("no_cifar_checksums")
def test_cifar10_reads_python_batches(tmp_path: Path) -> None:
    write_cifar(
        tmp_path,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
        "labels",
        10,
    )
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    data = load_source(TorchvisionSource(name="CIFAR10", root=tmp_path))
    assert data.images.shape == (120, 3, 32, 32)
    assert data.official_test is not None and data.official_test.sum() == 20
    assert data.class_names[3] == "c3"


@pytest.mark.usefixtures("no_cifar_checksums")
def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "fine_labels", 100)
    with open(tmp_path / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"f{i}" for i in range(100)]}, f)
    data = load_source(TorchvisionSource(name="CIFAR100", root=tmp_path))
    assert data.images.shape == (400, 3, 32, 32) and len(data.class_names) == 100
    # the version follows the dataset's files: a rewritten batch is a new version
    source = TorchvisionSource(name="CIFAR100", root=tmp_path)
    version = source_version(source)
    assert source_version(source) == version
    batch = tmp_path / "cifar-100-python" / "train"
    batch.write_bytes(batch.read_bytes() + b"\0")
    assert source_version(source) != version


def test_torchvision_missing_files_name_the_root_and_the_download_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.root .*download"):
        load_source(TorchvisionSource(name="MNIST", root=tmp_path))


def test_the_check_and_the_signature(tmp_path: Path) -> None:
    source = TorchvisionSource(name="MNIST", root=tmp_path)
    with pytest.raises(DataError, match="download"):
        check_source(source)
    write_idx_mnist(tmp_path / "MNIST" / "raw", "train", n_per_class=1)
    write_idx_mnist(tmp_path / "MNIST" / "raw", "t10k", n_per_class=1)
    check_source(source)
    classes, channels, size = source_signature(source)
    assert (len(classes), channels, size) == (10, 1, 28)
    assert source_sample(source).shape == (1, 1, 28, 28)
