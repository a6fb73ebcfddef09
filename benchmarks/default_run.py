"""The default run as a new user gets it: `kd run` on the built-in defaults, in a scratch dir.

    python benchmarks/default_run.py --out DIR [--config FILE] [--set key=value ...]

Runs the real command line once, as its own process, with its own work dir and MLflow SQLite
store, and writes what it printed: DIR/default_run.md (the summary table and the lines after
it, scratch paths shortened) and DIR/default_run.json (wall time, per-variant accuracy, each
stage's time from its MLflow run, and the rates benchmarks/distill_quality.py weighs budgets
with: seconds per teacher epoch, per cached view, per student epoch). README quotes
DIR/default_run.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.config import PipelineConfig, load_config
from components.io import write_json, write_text
from components.latency import cpu_info
from flows.cli import script_parser
from flows.tracking import Tracker


def stage_seconds(tracking_uri: str, experiment: str) -> dict[str, float]:
    """Each stage's own time in the run, from its MLflow child run."""
    tracker = Tracker(tracking_uri)
    runs = tracker.runs.pipeline_runs(experiment, last=1)
    if not runs:
        raise SystemExit(f"no finished pipeline run in experiment {experiment!r}")
    parent = runs[0]
    return {
        name: round(((run.end_time or run.start_time) - run.start_time) / 1000, 2)
        for name, run in tracker.runs.children(parent).items()
    }


def rates(stages: dict[str, float], config: PipelineConfig) -> dict[str, float]:
    """What the default run's training and cache cost on this machine: seconds per teacher
    epoch, per cached view, per student epoch (the mean of the two students); what
    benchmarks/distill_quality.py weighs budgets with."""
    epochs = config.student.train.epochs
    return {
        "teacher_epoch": stages["teacher"] / config.teacher.train.epochs,
        "cache_view": stages["logit-cache"] / config.cache.views,
        "student_epoch": (stages["student-kd"] + stages["student-baseline"]) / (2 * epochs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    args = parser.parse_args(argv)
    load_config(args.config, args.overrides)  # a bad config fails here, not in the process
    scratch = Path(tempfile.mkdtemp(prefix="kd-default-run-"))
    command = [sys.executable, "-m", "flows.cli", "run", "--set", f"work_dir={scratch / 'kd-work'}"]
    if args.config is not None:
        command += ["--config", str(args.config.resolve())]
    for override in args.overrides:
        command += ["--set", override]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
    env.pop("PREFECT_API_URL", None)  # kd starts the work dir's own server, as on a fresh machine
    started = time.perf_counter()
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"kd run failed (exit {done.returncode})")
    printed = done.stdout.replace(str(scratch), "<scratch>")
    summary = printed[printed.index("| model |") :].rstrip() + "\n"
    rows = re.findall(r"^\| (\S+) \| (\w+) \| ([0-9.]+)(?: \[[^\]]*\])? \|", summary, re.MULTILINE)
    config = load_config(args.config, args.overrides)
    stages = stage_seconds(f"sqlite:///{scratch / 'mlflow.db'}", config.experiment_name)
    report = {
        "process_seconds": round(seconds, 1),
        "test_accuracy": {variant: float(accuracy) for variant, _, accuracy in rows},
        "stage_seconds": stages,
        "rates": rates(stages, config),
        "cpu": cpu_info()["model"],
        "cores": os.cpu_count(),
        "overrides": args.overrides,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "default_run.json", report)
    header = (
        f"`kd run` on the built-in defaults, {report['cores']} cores ({report['cpu']}): the whole "
        f"process took {seconds:.0f} s (starting its Prefect server and imports included).\n\n"
    )
    write_text(args.out / "default_run.md", header + "```\n" + summary + "```\n")
    print(header + summary)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
