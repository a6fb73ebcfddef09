"""The expensive fixtures of the flow tests, shared: one tiny
pipeline run and its unchanged rerun that the read-only tests share, and a warm copy of the
store after that first run for the tests that change something and run again."""

from __future__ import annotations

import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from tests.conftest import RICH_OVERRIDES
from tests.helpers import run_args


@dataclass(frozen=True)
class Store:
    """An MLflow SQLite store (artifacts beside it) and the work dir of the runs logged to it."""

    root: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)

    def args(self, *overrides: str) -> list[str]:
        """``kd run`` arguments that hit this store's cached stages unless overridden."""
        return run_args(self.work, *overrides, base=RICH_OVERRIDES)


@dataclass(frozen=True)
class SessionRuns:
    store: Store
    outputs: list[str]  # what each `kd run` printed
    snapshot: Path  # the store as it was after the first run


@pytest.fixture(scope="session")
def shared_runs(prefect_server: Path, tmp_path_factory: pytest.TempPathFactory) -> SessionRuns:
    """A tiny pipeline run (INT8 and two batch sizes on 1 thread and all cores included) and
    its unchanged rerun, through the CLI, in one store: read, never written, by the tests."""
    store = Store(tmp_path_factory.mktemp("session-store"))
    snapshot = tmp_path_factory.mktemp("after-first-run") / "store"
    outputs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
        patch.chdir(store.root)
        for _ in range(2):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(store.args()) == 0
            outputs.append(printed.getvalue())
            if not snapshot.exists():
                shutil.copytree(store.root, snapshot)
    return SessionRuns(store, outputs, snapshot)


@pytest.fixture
def session_runs(shared_runs: SessionRuns, monkeypatch: pytest.MonkeyPatch) -> SessionRuns:
    """The session's run and rerun, with MLflow pointed at their store for this test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_runs.store.tracking_uri)
    return shared_runs


@pytest.fixture
def warm_store(shared_runs: SessionRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A copy of the session's store and work dir as they were after its first run: every
    stage is cached, so a test pays only for what it changes. (Work-dir paths in the cached
    references are relative, so the copy's own files are the ones checked and used.)"""
    store = Store(tmp_path / "store")
    shutil.copytree(shared_runs.snapshot, store.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    monkeypatch.chdir(store.root)
    return store


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its schema created: a fresh one spends ~2 s migrating."""
    path = tmp_path_factory.mktemp("empty-mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(empty_mlflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real, empty MLflow SQLite store in a temp dir; artifacts land beside it."""
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri
