"""``data.kind: image_folder``: a directory of class sub-directories of images (the
torchvision ImageFolder layout), resized to a square; unreadable images skipped with a
count, or refused, as configured."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from components.config import ImageFolderSource
from components.data_sources import DataError, SourceData, all_files, files_version


def _read(path: Path, source: ImageFolderSource) -> np.ndarray:
    """One image as the source prepares it: converted, resized, uint8 (C, H, W)."""
    from PIL import Image

    with Image.open(path) as image:
        resized = image.convert("L" if source.channels == 1 else "RGB").resize(
            (source.image_size, source.image_size), Image.Resampling.BILINEAR
        )
    array = np.asarray(resized, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


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
        from PIL import UnidentifiedImageError
        from torchvision.datasets import ImageFolder

        if not source.root.is_dir():
            raise DataError(f"data.root {source.root}: directory does not exist")
        try:
            folder = ImageFolder(str(source.root), loader=lambda path: path)
        except (FileNotFoundError, OSError) as err:
            raise DataError(f"data.root {source.root}: {err}") from err
        images, labels, bad = [], [], []
        for path, label in folder.samples:
            try:
                images.append(_read(path, source))
            except (OSError, UnidentifiedImageError, ValueError) as err:
                if source.on_bad_image == "error":
                    raise DataError(f"unreadable image {path}: {err}") from err
                bad.append(path)
                continue
            labels.append(label)
        if bad:
            warnings.warn(
                f"skipped {len(bad)} unreadable image(s) under {source.root}, e.g. {bad[0]}",
                stacklevel=4,
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

    def sample(self, source: ImageFolderSource) -> np.ndarray:
        from PIL import UnidentifiedImageError
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

        classes = find_classes(str(source.root))[0]
        files = sorted(
            p
            for name in classes
            for p in (source.root / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
        )
        for path in files:
            try:
                return _read(path, source)[None]
            except (OSError, UnidentifiedImageError, ValueError):
                continue
        raise DataError(f"data.root {source.root}: no readable image")

    def version(self, source: ImageFolderSource) -> str:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        root = Path(source.root)
        images = [p for p in all_files(root) if p.suffix.lower() in IMG_EXTENSIONS]
        return files_version(root, images)

    def signature(self, source: ImageFolderSource) -> tuple[list[str], int, int]:
        from torchvision.datasets.folder import find_classes

        return find_classes(str(source.root))[0], source.channels, source.image_size


IMPLEMENTATION = ImageFolder()
