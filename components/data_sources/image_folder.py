"""``data.kind: image_folder``: a directory of class sub-directories of images (the
torchvision ImageFolder layout), resized to a square; unreadable images skipped with a
count, or refused, as configured."""

from __future__ import annotations

import warnings

import numpy as np

from components.config import ImageFolderSource
from components.data_sources import DataError, SourceData


class ImageFolder:
    def check(self, source: ImageFolderSource) -> None:
        if not source.root.is_dir():
            raise DataError(f"data.root {source.root}: directory does not exist")
        classes = [d for d in source.root.iterdir() if d.is_dir()]
        if not classes or not any(f.is_file() for d in classes for f in d.rglob("*")):
            raise DataError(
                f"data.root {source.root}: no class sub-directories with image files in it"
            )

    def load(self, source: ImageFolderSource) -> SourceData:
        from PIL import Image, UnidentifiedImageError
        from torchvision.datasets import ImageFolder

        if not source.root.is_dir():
            raise DataError(f"data.root {source.root}: directory does not exist")
        try:
            folder = ImageFolder(str(source.root), loader=lambda path: path)
        except (FileNotFoundError, OSError) as err:
            raise DataError(f"data.root {source.root}: {err}") from err
        mode = "L" if source.channels == 1 else "RGB"
        images, labels, bad = [], [], []
        for path, label in folder.samples:
            try:
                with Image.open(path) as image:
                    resized = image.convert(mode).resize(
                        (source.image_size, source.image_size), Image.Resampling.BILINEAR
                    )
            except (OSError, UnidentifiedImageError, ValueError) as err:
                if source.on_bad_image == "error":
                    raise DataError(f"unreadable image {path}: {err}") from err
                bad.append(path)
                continue
            array = np.asarray(resized, dtype=np.uint8)
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(label)
        if bad:
            warnings.warn(
                f"skipped {len(bad)} unreadable image(s) under {source.root}, e.g. {bad[0]}",
                stacklevel=2,
            )
        if not images:
            raise DataError(f"data.root {source.root}: no readable images")
        return SourceData(
            images=np.stack(images),
            labels=np.asarray(labels, dtype=np.int64),
            class_names=list(folder.classes),
            official_test=None,
            identity={
                "kind": "image_folder",
                "image_size": str(source.image_size),
                "channels": str(source.channels),
            },
        )

    def signature(self, source: ImageFolderSource) -> tuple[list[str], int, int]:
        from torchvision.datasets.folder import find_classes

        return find_classes(str(source.root))[0], source.channels, source.image_size


IMPLEMENTATION = ImageFolder()
