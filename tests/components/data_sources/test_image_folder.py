"""ImageFolder directories, written by the tests."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.config import ImageFolderSource
from components.data_sources import (
    DataError,
    check_source,
    load_source,
    source_sample,
    source_signature,
    source_version,
)

RNG = np.random.default_rng(0)


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


def test_the_check_and_the_signature(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class sub-directories"):
        check_source(ImageFolderSource(root=tmp_path))
    write_image_folder(tmp_path)
    check_source(ImageFolderSource(root=tmp_path))
    assert source_signature(ImageFolderSource(root=tmp_path, image_size=16, channels=1)) == (
        ["cat", "dog"],
        1,
        16,
    )


def test_one_sample_is_a_readable_image_as_prepared(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    (tmp_path / "cat" / "0.png").write_bytes(b"broken")  # the first file: skipped
    sample = source_sample(ImageFolderSource(root=tmp_path, image_size=16, channels=1))
    assert sample.shape == (1, 1, 16, 16) and sample.dtype == np.uint8


def test_the_version_changes_with_the_images_and_only_with_them(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    source = ImageFolderSource(root=tmp_path)
    first = source_version(source)
    assert source_version(source) == first  # read again: the same files, the same version
    (tmp_path / "notes.txt").write_text("not an image")
    assert source_version(source) == first  # what the loader would not read does not count
    Image.fromarray(RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
        tmp_path / "cat" / "new.png"
    )
    grown = source_version(source)
    assert grown != first  # an image added
    (tmp_path / "dog" / "0.png").unlink()
    assert source_version(source) not in (first, grown)  # and one removed
    with pytest.raises(DataError, match="not found"):
        source_version(ImageFolderSource(root=tmp_path / "gone"))


def test_the_version_sees_images_in_a_class_folder_linked_from_elsewhere(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_image_folder(elsewhere)
    root = tmp_path / "data"
    root.mkdir()
    for name in ("cat", "dog"):
        (root / name).symlink_to(elsewhere / name, target_is_directory=True)
    source = ImageFolderSource(root=root)
    first = source_version(source)
    Image.fromarray(RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
        elsewhere / "dog" / "new.png"
    )
    assert source_version(source) != first  # the loader reads it: so it is new data
