"""``kd serve``: the pipeline as a scheduled Prefect deployment.

Prefect's own machinery does the work: ``Flow.serve`` registers the deployment
``kd-retrain/<name>`` with a cron schedule and runs what the server's scheduler queues.
The schedule needs a server with its scheduler: the one at ``PREFECT_API_URL`` when set,
else the work dir's local ``prefect server start`` (``flows/servers.py``), which lives as
long as ``kd serve`` does (the ephemeral server Prefect starts on its own has no scheduler).
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect.schedules import Cron, Schedule


def cron_schedule(cron: str, timezone: str) -> Schedule:
    """The schedule, or ValueError naming what is wrong with the expression or time zone."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {timezone!r}") from err
    return Cron(cron, timezone=timezone)


def serve_pipeline(
    name: str,
    cron: str,
    timezone: str,
    config_path: Path | None,
    overrides: list[str],
    force: list[str],
) -> None:
    """Register ``kd-retrain/<name>`` on the cron and serve its runs until interrupted."""
    from flows.pipeline import retrain

    retrain.serve(
        name=name,
        schedule=cron_schedule(cron, timezone),
        # Absolute: each scheduled run starts in its own process.
        parameters={
            "config_path": str(config_path.resolve()) if config_path else None,
            "overrides": overrides,
            "force": force,
        },
        tags=["kd-pipeline"],
        description="kd-pipeline retraining on a schedule (kd serve)",
    )
