"""Two `kd run`s on one machine at once: does each take about twice as long as alone (the
cores shared fairly), or more (each taking every core)?

    python benchmarks/concurrency.py --out DIR [--config FILE] [--set key=value ...]

Runs the real command line on the config (the defaults unless told otherwise), each process in
a scratch directory with its own work dir and MLflow store and its own Prefect server: first
one alone, then two started together in two work dirs. Writes DIR/concurrency.json
(``concurrent_vs_alone_ratio``: the mean wall time of the two concurrent runs / the run
alone; 2.0 is fair sharing, more is oversubscription) and DIR/concurrency.md. The machine must
be otherwise quiet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.config import load_config
from components.io import write_json, write_text
from components.latency import cpu_info
from flows.cli import EXIT_REFUSED, script_parser


def _start(scratch: Path, args: list[str], server: bool) -> tuple[subprocess.Popen, float]:
    command = [sys.executable, "-m", "flows.cli", "run", "--set", f"work_dir={scratch / 'w'}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
    if not server:
        env.pop("PREFECT_API_URL", None)  # each its own server, as two users' runs would
    for name in ("KD_THREADS", "OMP_NUM_THREADS"):
        env.pop(name, None)  # kd's own policy decides
    scratch.mkdir(parents=True)
    log = open(scratch / "kd.log", "w")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen([*command, *args], cwd=scratch, env=env, stdout=log, stderr=log)
    return process, time.perf_counter()


def _wait(process: subprocess.Popen, started: float, scratch: Path) -> float:
    # A refused model (exit 3) is a finished run: two runs sharing the cores compute in
    # another thread count than one alone, so their students may differ and one fall under a
    # registry floor; the time is what is measured.
    if process.wait() not in (0, EXIT_REFUSED):
        raise SystemExit(f"kd run failed: {(scratch / 'kd.log').read_text()[-3000:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="time `kd run --check` instead of whole runs (the mechanics, in seconds)",
    )
    parser.add_argument(
        "--shared-prefect",
        action="store_true",
        help="all runs on the Prefect server PREFECT_API_URL names (default: each its own)",
    )
    args = parser.parse_args(argv)
    load_config(args.config, args.overrides)  # a bad config fails here, not in the processes
    extra = (["--config", str(args.config.resolve())] if args.config else []) + [
        a for o in args.overrides for a in ("--set", o)
    ]
    if args.check_only:
        extra.append("--check")
    root = Path(tempfile.mkdtemp(prefix="kd-concurrency-"))
    try:
        alone = _wait(*_start(root / "alone", extra, args.shared_prefect), root / "alone")
        pair = [_start(root / f"together-{i}", extra, args.shared_prefect) for i in (1, 2)]
        together = [
            _wait(process, started, root / f"together-{i}")
            for i, (process, started) in enumerate(pair, start=1)
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = sum(together) / len(together) / alone
    report = {
        "concurrent_vs_alone_ratio": ratio,
        "alone_seconds": round(alone, 1),
        "together_seconds": [round(s, 1) for s in together],
        "fair_ratio": 2.0,
        "cpu": cpu_info()["model"],
        "cores": os.cpu_count(),
        "overrides": args.overrides,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "concurrency.json", report)
    text = (
        f"Two `kd run`s at once on {report['cores']} cores ({report['cpu']}), in two work dirs: "
        f"{together[0]:.0f} s and {together[1]:.0f} s, against {alone:.0f} s alone: "
        f"concurrent_vs_alone_ratio **{ratio:.2f}** (fair sharing of the cores is 2.0).\n"
    )
    write_text(args.out / "concurrency.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
