"""Folds of the training and validation pool: fold 0 is the dataset's own split, the others
hold out stratified parts of the training split as large as validation; together they hold
out every pool image exactly once, and none holds out or trains on a test image."""

import numpy as np
import pytest

from components.data import Dataset, load_dataset
from components.folds import fold_count, fold_dataset


def test_folds_partition_the_pool_and_never_touch_the_test_split(mnist_dataset: Dataset) -> None:
    folds = fold_count(mnist_dataset)
    pool_size = len(mnist_dataset.splits["train"]) + len(mnist_dataset.splits["val"])
    n_val = len(mnist_dataset.splits["val"])
    assert folds == round(pool_size / n_val)  # the pool in folds of the validation split's size
    assert fold_dataset(mnist_dataset, 0, folds) is mnist_dataset
    pool = np.concatenate([mnist_dataset.splits["train"], mnist_dataset.splits["val"]])
    test = set(mnist_dataset.splits["test"].tolist())
    held_out = []
    for fold in range(folds):
        data = fold_dataset(mnist_dataset, fold, folds)
        train, val = set(data.splits["train"].tolist()), set(data.splits["val"].tolist())
        assert not train & val and not (train | val) & test
        assert train | val == set(pool.tolist())
        assert np.array_equal(data.splits["test"], mnist_dataset.splits["test"])
        assert len(val) == pytest.approx(n_val, rel=0.05)  # as many as the pipeline validates on
        counts = np.bincount(mnist_dataset.labels[data.splits["val"]], minlength=10)
        if fold > 0:  # dealt out class by class (fold 0 is the content split's own)
            assert counts.max() - counts.min() <= 0.1 * len(val)  # stratified
        held_out += sorted(val)
    assert sorted(held_out) == sorted(pool.tolist())  # every pool image held out once
    other = fold_dataset(mnist_dataset, 3, folds)
    assert other.info.fingerprint != mnist_dataset.info.fingerprint
    assert fold_dataset(mnist_dataset, 3, folds, seed=1).info.fingerprint != other.info.fingerprint


def test_a_fold_cannot_be_reloaded_by_path(mnist_dataset: Dataset) -> None:
    # a launched process reloads data by path: a fold must fail there, not train on the pool
    data = fold_dataset(mnist_dataset, 2, fold_count(mnist_dataset))
    with pytest.raises(ValueError, match=r"meta\.json"):
        load_dataset(data.info.path)
