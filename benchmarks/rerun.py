"""Incremental reruns: how long `kd run` takes when nothing, or only the student, changed.

    python benchmarks/rerun.py --out DIR [--config FILE] [--set key=value ...]

In a fresh scratch directory (its own work dir and MLflow SQLite store), runs the real
command line three times as separate processes, the way a schedule does:

1. ``kd run`` on the config: everything computed;
2. ``kd run`` again, unchanged: every cached stage should be reused;
3. ``kd run`` with only the student's learning rate changed: teacher and logit cache reused.

Wall times are of the whole process (Python start-up, imports and starting the Prefect
server included), so they are what a user waits; ``--in-process`` calls kd in this process
instead (no start-up in the times: a quick check of the reuse, as the tests run it).
Writes DIR/rerun.json (top level: ``rerun_vs_first_ratio`` = run 2 / run 1) and
DIR/rerun.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from components.config import load_config
from components.io import write_json, write_text
from flows.cli import EXIT_REFUSED, add_config_arguments, run_kd
from flows.tracking import Tracker

STUDENT_CHANGE = "student.train.lr={lr}"


def _kd_run(
    scratch: Path, config: Path | None, overrides: list[str], log: Path, in_process: bool
) -> float:
    arguments = ["run"]
    if config is not None:
        arguments += ["--config", str(config.resolve())]
    for override in overrides:
        arguments += ["--set", override]
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    code, seconds = run_kd(arguments, scratch, uri, log, in_process)
    # a refused model (exit 3) is a finished run: every stage ran, only the alias stayed
    if code not in (0, EXIT_REFUSED):
        raise SystemExit(f"kd run failed (exit {code}); see {log}")
    return seconds


def _last_parent_tags(scratch: Path, experiment: str) -> dict[str, str]:
    tracker = Tracker(f"sqlite:///{scratch / 'mlflow.db'}")
    return tracker.runs.pipeline_runs(experiment, last=1)[0].tags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="call kd in this process (times without start-up; for a quick check)",
    )
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)  # fail here on a bad config, not later
    student_change = STUDENT_CHANGE.format(lr=config.student.train.lr * 0.5)

    scratch = Path(tempfile.mkdtemp(prefix="kd-rerun-"))
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for label, extra in (
        ("first run", []),
        ("rerun, unchanged inputs", []),
        (f"rerun, student changed ({student_change})", [student_change]),
    ):
        overrides = [*args.overrides, f"work_dir={scratch / 'kd-work'}", *extra]
        log = scratch / f"rerun-{len(runs) + 1}.log"  # kept with --keep
        seconds = _kd_run(scratch, args.config, overrides, log, args.in_process)
        tags = _last_parent_tags(scratch, config.experiment_name)
        runs.append(
            {
                "run": label,
                "seconds": round(seconds, 2),
                "reused_stages": tags.get("reused_stages", ""),
                "computed_stages": tags.get("computed_stages", ""),
            }
        )
        print(f"{label}: {seconds:.1f} s; reused: {runs[-1]['reused_stages']}", flush=True)
    first, rerun, changed = (r["seconds"] for r in runs)
    report = {
        "rerun_vs_first_ratio": round(rerun / first, 4),
        "student_change_vs_first_ratio": round(changed / first, 4),
        "goal": "rerun_vs_first_ratio <= 0.2",
        "measured": (
            "wall time of kd run called in one process, without start-up"
            if args.in_process
            else "wall time of the whole `kd run` process, start-up and Prefect server included"
        ),
        "config": str(args.config) if args.config else "built-in defaults",
        "overrides": args.overrides,
        "cores": os.cpu_count(),
        "runs": runs,
    }
    write_json(args.out / "rerun.json", report)
    lines = [
        "| run | wall s | reused stages | computed stages |",
        "|---|---:|---|---|",
        *(
            f"| {r['run']} | {r['seconds']:.1f} | {r['reused_stages']} | {r['computed_stages']} |"
            for r in runs
        ),
        "",
        f"rerun_vs_first_ratio: {report['rerun_vs_first_ratio']:.3f} (goal <= 0.2); "
        f"student change: {report['student_change_vs_first_ratio']:.3f}",
    ]
    write_text(args.out / "rerun.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.keep:
        print(f"scratch directory kept: {scratch} (MLflow store: sqlite:///{scratch}/mlflow.db)")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
