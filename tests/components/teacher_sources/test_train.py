"""The default source: the teacher stage trains the teacher; nothing is brought in."""

from pathlib import Path

import pytest

from components.config import TrainedTeacher
from components.teacher_sources import Source, source_of
from components.teachers import TeacherError
from tests.components.teacher_sources.conftest import SPEC, FileRegistry


def test_a_teacher_trained_here_is_trained_not_brought_in(tmp_path: Path) -> None:
    source = source_of(TrainedTeacher())
    assert isinstance(source, Source) and source.trained_here
    assert source.identity(TrainedTeacher(), FileRegistry({})) == {}
    with pytest.raises(TeacherError, match="trained, not brought in"):
        source.bring_in(TrainedTeacher(), SPEC, tmp_path, FileRegistry({}))
