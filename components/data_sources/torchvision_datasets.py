"""``data.kind: torchvision``: MNIST, FashionMNIST, CIFAR-10 and CIFAR-100 read from
``data.root`` by torchvision's own readers; the official test set is the test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.config import TorchvisionSource
from components.data_sources import DataError, SourceData, all_files, files_version


def _split(source: TorchvisionSource, train: bool) -> Any:
    from torchvision import datasets

    try:
        return getattr(datasets, source.name)(
            root=str(source.root), train=train, download=source.download
        )
    except RuntimeError as err:
        raise DataError(
            f"data.root {source.root}: {source.name} not found or corrupted ({err}); "
            "set data.download=true to fetch it"
        ) from err


class TorchvisionDatasets:
    def check(self, source: TorchvisionSource) -> None:
        if not source.download:
            _split(source, train=False)

    def load(self, source: TorchvisionSource) -> SourceData:
        parts = [_split(source, train) for train in (True, False)]
        images, labels = [], []
        for part in parts:
            array = np.asarray(part.data, dtype=np.uint8)
            # MNIST-style data is (N, H, W); CIFAR is (N, H, W, C).
            array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
            images.append(array)
            labels.append(np.asarray(part.targets, dtype=np.int64))
        official_test = np.concatenate(
            [np.zeros(len(labels[0]), bool), np.ones(len(labels[1]), bool)]
        )
        return SourceData(
            images=np.ascontiguousarray(np.concatenate(images)),
            labels=np.concatenate(labels),
            class_names=list(parts[0].classes),
            official_test=official_test,
            identity={"kind": "torchvision", "name": source.name},
        )

    def version(self, source: TorchvisionSource) -> str:
        # Every file under the root: torchvision's folder layout differs by dataset, and a
        # change elsewhere under it costs only a run whose stages are all reused.
        root = Path(source.root)
        return files_version(root, all_files(root))

    def signature(self, source: TorchvisionSource) -> tuple[list[str], int, int]:
        split = _split(source, train=False)
        sample = np.asarray(split.data[:1], dtype=np.uint8)
        channels = 1 if sample.ndim == 3 else int(sample.shape[-1])
        return list(split.classes), channels, int(sample.shape[1])

    def sample(self, source: TorchvisionSource) -> np.ndarray:
        array = np.asarray(_split(source, train=False).data[:1], dtype=np.uint8)
        return array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)


IMPLEMENTATION = TorchvisionDatasets()
