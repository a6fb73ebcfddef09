"""What a new user sees in MLflow's own UI after a run: the runs table's Dataset, Source and
Models columns, read from the page as headless Chromium renders it, and a screenshot.

    python benchmarks/mlflow_ui.py --out DIR [--chromium PATH] [--set key=value ...]

Runs `kd run` (the defaults, or the overrides given) as its own process in a scratch dir, starts
`mlflow server` on that store, opens the experiment's runs page in Chromium (Debian's
``chromium`` package: ``apt-get install chromium``; not installed by the project, so this
stays out of CI) and checks that the rendered page names the stage runs' dataset inputs, the
code's git commit and branch, and the logged models. Writes DIR/mlflow_ui.json (what was found)
and DIR/mlflow_ui.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from components.config import load_config
from components.io import code_version, write_json
from flows.cli import script_parser
from flows.servers import free_port, server_process
from flows.tracking import Tracker

RENDER_MS = 30_000  # virtual time the page gets to fetch and render the runs table


def chromium(binary: str, url: str, *args: str) -> str:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    command += ["--window-size=1800,1000", f"--virtual-time-budget={RENDER_MS}", *args, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise SystemExit(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--dom", type=Path, help="also write the runs page as rendered (HTML)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    if shutil.which(args.chromium) is None:
        raise SystemExit(f"{args.chromium}: not found (apt-get install chromium)")
    scratch = Path(tempfile.mkdtemp(prefix="kd-mlflow-ui-"))
    store = f"sqlite:///{scratch / 'mlflow.db'}"
    command = [sys.executable, "-m", "flows.cli", "run", "--set", f"work_dir={scratch / 'kd-work'}"]
    if args.config is not None:
        command += ["--config", str(args.config.resolve())]
    command += [a for o in args.overrides for a in ("--set", o)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kd run failed ({done.returncode}):\n{done.stderr[-3000:]}")

    tracker = Tracker(store)
    experiment_id = tracker.runs.experiment_id(config.experiment_name)
    (parent,) = tracker.runs.pipeline_runs(config.experiment_name, last=1)
    children = tracker.runs.children(parent)
    model_ids = tracker.runs.logged_model_ids([run.run_id for run in children.values()])
    (onnx_model,) = tracker.runs.logged_model_ids([children["handoff"].run_id])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    server += ["--workers", "1", "--backend-store-uri", store]
    args.out.mkdir(parents=True, exist_ok=True)
    page = f"{url}/#/experiments/{experiment_id}/runs"
    # The handoff stage's row: the ONNX model it logged and registered. Sorted by creation
    # time (the default), the stage runs are folded under the pipeline's row; sorted by
    # another key, MLflow lists every run flat, each with its own Models cell.
    handoff_rows = (
        page
        + "?"
        + urllib.parse.urlencode(
            {"searchFilter": "run_name = 'handoff'", "orderByKey": "tags.`mlflow.runName`"}
        )
    )
    run_page = f"{page}/{parent.run_id}"
    with server_process("mlflow server", server, url, scratch / "server.log", env, 120):
        table = chromium(args.chromium, page, "--dump-dom")
        chromium(args.chromium, page, f"--screenshot={(args.out / 'mlflow_ui.png').resolve()}")
        handoff = chromium(args.chromium, handoff_rows, "--dump-dom")
        shot = (args.out / "mlflow_ui_handoff.png").resolve()
        chromium(args.chromium, handoff_rows, f"--screenshot={shot}")
        details = chromium(args.chromium, run_page, "--dump-dom")
    if args.dom is not None:
        args.dom.write_text(handoff)
    code = code_version()
    # What the pipeline's row of the runs table shows, and its run page.
    expected = {
        "Dataset column": (table, f"{config.dataset_name}/train"),
        "Source column (branch)": (table, code["git_branch"]),
        "Models column (handoff row)": (handoff, f"/models/{onnx_model}"),
        "run page: git commit": (details, code["git_commit"][:7]),
    }
    found = {what: text in dom for what, (dom, text) in expected.items()}
    report = {
        "pages": [page, handoff_rows, run_page],
        "expected": {what: text for what, (_, text) in expected.items()},
        "found": found,
        "logged_models": model_ids,
        "all_found": all(found.values()),
    }
    write_json(args.out / "mlflow_ui.json", report)
    for what, (_, text) in expected.items():
        print(f"{what:30} {text!r}: {'shown' if found[what] else 'NOT SHOWN'}")
    print(f"screenshot: {args.out / 'mlflow_ui.png'}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if report["all_found"] else 1


if __name__ == "__main__":
    sys.exit(main())
