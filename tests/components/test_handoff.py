"""The registry's floor: a distilled student is refused only when it is clearly below its
label-only control on validation (the whole interval), never on one image's noise."""

import numpy as np

from components.config import RegistryConfig
from components.handoff import registration_floor


def _pair(n: int, only_student: int, only_control: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired correctness on n images: both right except where one alone is."""
    student, control = np.ones(n, bool), np.ones(n, bool)
    student[:only_control] = False
    control[only_control : only_control + only_student] = False
    return student, control


def test_a_student_a_little_below_its_control_is_registered() -> None:
    # 464 images, the control ahead by one image net (0.2 points): noise, not harm
    student, control = _pair(464, only_student=4, only_control=5)
    assert registration_floor(student, control, RegistryConfig()) is None


def test_a_student_clearly_below_its_control_is_refused_with_its_interval() -> None:
    student, control = _pair(464, only_student=2, only_control=30)  # 6 points behind
    reason = registration_floor(student, control, RegistryConfig())
    assert reason is not None and "wholly below registry.min_gain_over_control +0.0000" in reason
    assert "is -0.0603, its 95% interval [" in reason
    assert registration_floor(student, control, RegistryConfig(min_gain_over_control=None)) is None


def test_the_absolute_floor_reads_the_students_own_accuracy() -> None:
    student, control = _pair(100, only_student=0, only_control=10)
    reason = registration_floor(student, control, RegistryConfig(min_val_accuracy=0.95))
    assert reason == "validation accuracy 0.9000 is below registry.min_val_accuracy 0.9500"
