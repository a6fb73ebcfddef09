"""A checkpoint of ours is copied byte for byte; a plain state_dict needs its architecture and
must fit it; what the fingerprint hashes is the file's content."""

from pathlib import Path

import pytest
import torch
from torch import nn

from components.checkpoint import load_checkpoint, save_checkpoint
from components.config import CheckpointTeacher
from components.io import sha256_file
from components.teacher_sources import source_of
from components.teachers import TeacherError
from tests.components.teacher_sources.conftest import SPEC, FileRegistry


def test_a_checkpoint_of_ours_is_brought_in_unchanged(
    classifier: nn.Module, tmp_path: Path
) -> None:
    original = tmp_path / "ours.pt"
    save_checkpoint(
        original, classifier, arch="cnn_tiny", in_channels=1, num_classes=10, image_size=28,
        class_names=[str(d) for d in range(10)], config={}, metrics={}, dataset_fingerprint="x",
    )  # fmt: skip
    config = CheckpointTeacher(path=original)
    source = source_of(config)
    assert not source.trained_here
    brought = source.bring_in(config, SPEC, tmp_path / "in", FileRegistry({}))
    assert brought.format == "checkpoint" and brought.class_names == [str(d) for d in range(10)]
    assert sha256_file(brought.path) == sha256_file(original)  # the same cache follows
    assert source.identity(config, FileRegistry({})) == {"sha256": sha256_file(original)}
    assert source.describe(config, brought) == "checkpoint ours.pt"


def test_a_plain_state_dict_needs_its_architecture_and_must_fit_it(
    classifier: nn.Module, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(classifier.state_dict(), plain)
    with pytest.raises(TeacherError, match=r"teacher\.source\.arch"):
        source_of(CheckpointTeacher(path=plain)).bring_in(
            CheckpointTeacher(path=plain), SPEC, tmp_path / "a", FileRegistry({})
        )
    with pytest.raises(TeacherError, match="do not fit"):
        config = CheckpointTeacher(path=plain, arch="cnn_small")
        source_of(config).bring_in(config, SPEC, tmp_path / "b", FileRegistry({}))
    config = CheckpointTeacher(path=plain, arch="cnn_tiny")
    brought = source_of(config).bring_in(config, SPEC, tmp_path / "c", FileRegistry({}))
    model, _ = load_checkpoint(brought.path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), classifier(x))
    assert brought.class_names is None  # unnamed outputs


def test_a_missing_or_foreign_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="does not exist"):
        config = CheckpointTeacher(path=tmp_path / "none.pt")
        source_of(config).bring_in(config, SPEC, tmp_path, FileRegistry({}))
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(TeacherError, match="not a PyTorch weights file"):
        config = CheckpointTeacher(path=text)
        source_of(config).bring_in(config, SPEC, tmp_path, FileRegistry({}))
