"""Splitting, fingerprinting and storing a source's data (the sources: data_sources/)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from components.config import MlxtendMnistSource, SplitConfig
from components.data import (
    Dataset,
    content_ids,
    load_dataset,
    normalize,
    prepare_dataset,
    split_images,
    split_version,
    stratified_split,
)
from components.data_sources import DataError

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


def _split_of(images: np.ndarray, labels: np.ndarray, split: SplitConfig) -> dict[int, str]:
    """content id -> split name, for every image."""
    ids = content_ids(images)
    return {
        int(ids[i]): name for name, idx in split_images(labels, ids, split).items() for i in idx
    }


def test_content_split_moves_no_image_when_images_are_added_or_removed() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3000, 1, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 5, 3000)
    first = _split_of(images[:2000], labels[:2000], SplitConfig())
    grown = _split_of(images, labels, SplitConfig())  # 50% more images
    shrunk = _split_of(images[500:2000], labels[500:2000], SplitConfig())
    assert all(grown[k] == v for k, v in first.items())
    assert all(first[k] == v for k, v in shrunk.items())
    # The shuffle split, by contrast, moves images when the data grows.
    before = _split_of(images[:2000], labels[:2000], SplitConfig(method="shuffle"))
    after = _split_of(images, labels, SplitConfig(method="shuffle"))
    assert sum(after[k] != v for k, v in before.items()) > 100


def test_content_split_is_stratified_approximately_seeded_and_keeps_duplicates_together() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4000, 1, 6, 6), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 1000)
    images[3999] = images[0]  # one duplicate, under another label
    split = SplitConfig(val_fraction=0.1, test_fraction=0.2, seed=3)
    splits = split_images(labels, content_ids(images), split)
    for cls in range(4):  # 1,000 images a class: within 5 binomial standard deviations
        for name, fraction in (("val", 0.1), ("test", 0.2)):
            share = np.mean(labels[splits[name]] == cls) * len(splits[name]) / 1000
            assert abs(share - fraction) < 5 * np.sqrt(fraction * (1 - fraction) / 1000)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(4000))
    where = {i: name for name, idx in splits.items() for i in idx.tolist()}
    assert where[0] == where[3999]
    again = split_images(labels, content_ids(images), split)
    other = split_images(labels, content_ids(images), split.model_copy(update={"seed": 4}))
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    assert not np.array_equal(splits["test"], other["test"])


def test_content_split_keeps_an_official_test_set() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (400, 1, 4, 4), dtype=np.uint8)
    labels = np.repeat(np.arange(2), 200)
    official = np.zeros(400, bool)
    official[::4] = True
    splits = split_images(labels, content_ids(images), SplitConfig(val_fraction=0.2), official)
    assert splits["test"].tolist() == np.flatnonzero(official).tolist()
    assert not set(splits["train"]) & set(splits["test"])
    assert 0.1 < len(splits["val"]) / 300 < 0.3  # carved out of the 300 others


def test_a_split_too_small_to_fill_is_refused_with_the_reason() -> None:
    images = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1)
    with pytest.raises(DataError, match="draws each image's split"):
        split_images(np.zeros(4, np.int64), content_ids(images), SplitConfig())


def test_split_versions_name_the_method_and_keep_the_shuffle_names_of_before() -> None:
    shuffle = split_version(SplitConfig(method="shuffle"))
    # The name registries recorded before there were methods (chains stay whole).
    old = hashlib.sha256(
        json.dumps({"seed": 0, "test_fraction": 0.1, "val_fraction": 0.1}, sort_keys=True).encode()
    ).hexdigest()[:12]
    assert shuffle == f"stratified-shuffle-{old}"
    content = split_version(SplitConfig())
    assert content.startswith("content-hash-") and content != split_version(SplitConfig(seed=1))


def test_prepared_dataset_is_stored_once_and_fingerprinted(tmp_path: Path) -> None:
    info = prepare_dataset(MlxtendMnistSource(), SplitConfig(), tmp_path)
    assert Path(info.path).name == info.fingerprint
    assert sum(info.split_sizes.values()) == 5000
    again = prepare_dataset(MlxtendMnistSource(), SplitConfig(), tmp_path)
    other = prepare_dataset(MlxtendMnistSource(), SplitConfig(seed=1), tmp_path)
    assert again.fingerprint == info.fingerprint and other.fingerprint != info.fingerprint
    shuffle = prepare_dataset(MlxtendMnistSource(), SplitConfig(method="shuffle"), tmp_path)
    assert shuffle.split_sizes == {"train": 4000, "val": 500, "test": 500}
    # Work dirs and benchmark units of before content splits keep their fingerprint.
    assert shuffle.fingerprint == "605e7d7ba520692b"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [info.fingerprint, other.fingerprint, shuffle.fingerprint]
    )


def test_normalize_uses_training_statistics(mnist_dataset: Dataset) -> None:
    images, _ = mnist_dataset.split("train")
    batch = normalize(images, mnist_dataset.info)
    assert batch.dtype.is_floating_point
    assert abs(batch.mean().item()) < 1e-3 and abs(batch.std().item() - 1) < 1e-2


def test_load_dataset_refuses_a_directory_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"meta\.json"):
        load_dataset(tmp_path)
