"""The default run's cost rates, as benchmarks/distill_quality.py reads them."""

import pytest

from components.config import load_config
from tests.helpers import benchmark


def test_rates_are_seconds_per_epoch_and_per_view_of_the_run() -> None:
    module = benchmark("default_run")
    config = load_config(None, ["teacher.train.epochs=10", "student.train.epochs=20"])
    stages = {"teacher": 100.0, "logit-cache": 16.0, "student-kd": 30.0, "student-baseline": 10.0}
    assert module.rates(stages, config) == pytest.approx(
        {"teacher_epoch": 10.0, "cache_view": 2.0, "student_epoch": 1.0}
    )
