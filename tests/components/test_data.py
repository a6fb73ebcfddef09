"""Splitting, fingerprinting and storing a source's data (the sources: data_sources/)."""

from pathlib import Path

import numpy as np
import pytest

from components.config import MlxtendMnistSource, SplitConfig
from components.data import (
    Dataset,
    load_dataset,
    normalize,
    prepare_dataset,
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
