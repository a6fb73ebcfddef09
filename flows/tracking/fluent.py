"""MLflow's process-wide state, handled in one place: the fluent API's tracking URI for the
calls that read it (model logging, the registry resolving ``models:/<id>``), and the advice
and progress bars MLflow prints."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

import mlflow

from components.io import temporary_env

_FLUENT = threading.RLock()


@contextlib.contextmanager
def fluent_tracking_uri(uri: str, experiment_id: str | None = None) -> Iterator[None]:
    """``uri`` for the block, for the MLflow calls that read the process-wide tracking URI
    rather than take a client (model logging; the registry resolving ``models:/<id>``).
    Restored exactly afterwards, MLFLOW_TRACKING_URI included: MLflow's setter writes that
    variable and, given None, deletes it, which would take the user's setting away from the
    rest of the process and from the processes it starts. ``experiment_id``: the experiment
    a model logged in the block belongs to; MLflow 3 otherwise files a model logged for a
    run (``log_model(run_id=...)``, no active run) under the Default experiment, where the
    run's experiment page never shows it."""
    from mlflow.tracking._tracking_service import utils

    experiment = (
        {"MLFLOW_EXPERIMENT_ID": experiment_id, "MLFLOW_EXPERIMENT_NAME": None}
        if experiment_id is not None
        else {}
    )
    # One block at a time: a sweep's students log their models from parallel threads, and
    # interleaved save/restore pairs would leave the process pinned to one store.
    # (MLFLOW_TRACKING_URI "set" to what it is: the setter below changes it, the exit restores)
    block_env = {"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI"), **experiment}
    with _FLUENT, temporary_env(**block_env):
        saved_uri = utils._tracking_uri
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            utils._tracking_uri = saved_uri  # (the setter refuses None, deletes the variable)


@contextlib.contextmanager
def quiet_model_logging() -> Iterator[None]:
    """Without MLflow's advice on pickle (our own modules, loaded by us) and its check of
    the stated requirements against this venv (the same venv): a warning per model."""
    loggers = [logging.getLogger(n) for n in ("mlflow.pytorch", "mlflow.utils.requirements_utils")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No progress bar: it fills the run's log with a line per artifact file."""
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before
