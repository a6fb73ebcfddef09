"""``kd serve``: the pipeline as a scheduled Prefect deployment.

Prefect's own machinery does the work: ``prefect.serve`` registers the deployments and runs
what the server's scheduler queues: ``kd-retrain/<name>`` on a cron schedule (``--cron``),
and ``kd-retrain-on-data/<name>`` on an interval (``--watch SECONDS``), which checks the data
source's version and retrains only when it changed (an unchanged check takes seconds and
ends "Unchanged"; one run at a time). Both are visible, with their schedules and
parameters, in the Prefect UI.
The schedule needs a server with its scheduler: the one at ``PREFECT_API_URL`` when set,
else the work dir's local ``prefect server start`` (``flows/servers.py``), which lives as
long as ``kd serve`` does (the ephemeral server Prefect starts on its own has no scheduler).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.schedules import Cron, Interval, Schedule


def cron_schedule(cron: str, timezone: str) -> Schedule:
    """The schedule, or ValueError naming what is wrong with the expression or time zone."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {timezone!r}") from err
    return Cron(cron, timezone=timezone)


def serve_pipeline(
    name: str,
    cron: str | None,
    timezone: str,
    watch_seconds: float | None,
    config_path: Path | None,
    overrides: list[str],
    force: list[str],
) -> None:
    """Register ``kd-retrain/<name>`` on the cron and/or ``kd-retrain-on-data/<name>`` every
    ``watch_seconds``, and serve their runs until interrupted."""
    from prefect import serve

    from flows.pipeline import retrain, retrain_on_new_data

    # Absolute: each scheduled run starts in its own process.
    parameters = {
        "config_path": str(config_path.resolve()) if config_path else None,
        "overrides": overrides,
        "force": force,
    }
    deployments: list[Any] = []  # RunnerDeployment (to_deployment is typed sync-or-async)
    if cron is not None:
        deployments.append(
            retrain.to_deployment(
                name=name,
                schedule=cron_schedule(cron, timezone),
                parameters=parameters,
                tags=["kd-pipeline"],
                description="kd-pipeline retraining on a schedule (kd serve --cron)",
            )
        )
    if watch_seconds is not None:
        deployments.append(
            retrain_on_new_data.to_deployment(
                name=name,
                schedule=Interval(timedelta(seconds=watch_seconds)),
                parameters={**parameters, "watch": name},
                concurrency_limit=1,  # a check waits for a retrain in progress, not beside it
                tags=["kd-pipeline"],
                description="kd-pipeline retraining when the data changes (kd serve --watch)",
            )
        )
    serve(*deployments)
