"""Cross-validation folds over a prepared dataset's training and validation pool.

Choosing a default (a method, its settings, a budget, a teacher recipe) on the 500 images of
one validation split is a coin flip: one image is 0.2 points. Folds give every image of the
pool a turn as held-out data. Fold 0 is the dataset's own split (its validation images held
out, its training images trained on); folds 1 .. k-1 each hold out a stratified part of the
training split, as large as the validation split, and train on the rest of the pool. So every
fold trains on as many images as the pipeline does, and the test split is in no fold's pool:
it is never read to choose.

A fold dataset lives in this process only: its ``info.path`` names no directory, so training
it in several processes (which reload data by path) is refused rather than silently wrong.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from components.data import Dataset, channel_stats
from components.io import sha256_json


def fold_count(dataset: Dataset) -> int:
    """How many folds of the validation split's size the pool holds (at least 3, so that a
    fold never holds out the whole training split)."""
    pool = len(dataset.splits["train"]) + len(dataset.splits["val"])
    return max(3, round(pool / len(dataset.splits["val"])))


def _training_parts(dataset: Dataset, parts: int, seed: int) -> list[np.ndarray]:
    """The training split cut into ``parts`` stratified parts: each class's images shuffled
    by ``seed`` and dealt out in turn."""
    train = dataset.splits["train"]
    labels = dataset.labels[train]
    rng = np.random.default_rng(seed)
    dealt: list[list[np.ndarray]] = [[] for _ in range(parts)]
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(train[labels == cls])
        for i in range(parts):
            # Start each class at another part, so the remainders spread evenly.
            dealt[(i + offset) % parts].append(members[i::parts])
        offset += len(members) % parts
    return [np.sort(np.concatenate(chunks)) for chunks in dealt]


def fold_dataset(dataset: Dataset, fold: int, folds: int, seed: int = 0) -> Dataset:
    """The dataset with fold ``fold`` of ``folds`` held out as its validation split, the rest
    of the pool as its training split, and the test split unchanged. Fold 0 is the dataset as
    it is. Its fingerprint names the fold, so caches and results of folds never mix."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} of {folds}")
    if fold == 0:
        return dataset
    held_out = _training_parts(dataset, folds - 1, seed)[fold - 1]
    pool = np.concatenate([dataset.splits["train"], dataset.splits["val"]])
    train = np.sort(np.setdiff1d(pool, held_out))
    splits = {"train": train, "val": held_out, "test": dataset.splits["test"]}
    mean, std = channel_stats(np.asarray(dataset.images[train]))
    info = replace(
        dataset.info,
        # Not a directory: a fold lives in memory, and reloading the pool by its path (a
        # launched process would) must fail, not train on the pool's own split.
        path=f"{dataset.info.path}#fold-{fold}-of-{folds}",
        fingerprint=sha256_json(
            {"dataset": dataset.info.fingerprint, "fold": fold, "folds": folds, "seed": seed}
        )[:16],
        mean=mean,
        std=std,
        split_sizes={name: len(indices) for name, indices in splits.items()},
    )
    return replace(dataset, info=info, splits=splits)
