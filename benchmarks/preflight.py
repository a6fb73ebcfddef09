"""How long a new user waits to hear that the input is wrong: `kd run --check` as a process.

    python benchmarks/preflight.py --out DIR [--repeats 5] [--config FILE] [--set key=value ...]

Runs the command line `kd run --check` (every pre-flight check: config, paths, data source,
teacher loadable and shaped right, architectures, servers and credentials; nothing written)
``--repeats`` times in a scratch directory, the interpreter's start and imports included, and
writes DIR/preflight.json (``preflight_seconds``: the median, and every repeat) and
DIR/preflight.md. Run it on a quiet machine: another job on the cores slows the imports.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.config import load_config
from components.io import write_json, write_text
from components.latency import cpu_info
from flows.cli import script_parser


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    load_config(args.config, args.overrides)  # a bad config fails here, not in the process
    kd = Path(sys.executable).parent / "kd"
    command = [str(kd), "run", "--check"]
    if args.config is not None:
        command += ["--config", str(args.config.resolve())]
    for override in args.overrides:
        command += ["--set", override]
    seconds = []
    with tempfile.TemporaryDirectory(prefix="kd-preflight-") as scratch:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{Path(scratch) / 'mlflow.db'}"}
        env.pop("PREFECT_API_URL", None)
        for _ in range(args.repeats):
            started = time.perf_counter()
            done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
            seconds.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise SystemExit(f"kd run --check failed (exit {done.returncode}): {done.stderr}")
        written = sorted(str(p.relative_to(scratch)) for p in Path(scratch).rglob("*"))
    report = {
        "preflight_seconds": statistics.median(seconds),
        "seconds": [round(s, 3) for s in seconds],
        "files_written": written,
        "command": " ".join(["kd", *command[1:]]),
        "cpu": cpu_info()["model"],
        "cores": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "preflight.json", report)
    text = (
        f"`{report['command']}` (every pre-flight check, nothing written: "
        f"{len(written)} files) on {report['cores']} cores ({report['cpu']}): median "
        f"{report['preflight_seconds']:.2f} s over {len(seconds)} runs "
        f"({', '.join(f'{s:.2f}' for s in seconds)} s), the interpreter's start included.\n"
    )
    write_text(args.out / "preflight.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
