"""Training and logit-cache building with 1 and 2 processes on this machine.

    python benchmarks/scaling.py --out DIR [--repeats 3] [--config FILE] [--set key=value ...]

Training: one epoch of the configured teacher (default resnet_small on the 4,000 training
images) in one process, and in 2 processes launched with torch.distributed's elastic launcher
(DistributedDataParallel, gloo on CPU / NCCL on GPU, each its share of every batch); the
epoch's training time (``epoch_seconds``, evaluation excluded) and the wall time including the
launch. Cache: the teacher's cache (default 8 views) built from scratch by 1 and 2 processes,
checked to give the same bytes. Each measurement ``--repeats`` times, alternating. The
teacher is untrained: a step costs the same whatever the weights. Writes DIR/scaling.json and
DIR/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from components.config import load_config
from components.data import load_dataset, prepare_dataset
from components.devices import resolve_device
from components.io import write_json, write_text
from components.latency import cpu_info
from components.logit_cache import build_logit_cache, pipeline_cache_spec
from components.models import build_model
from components.recipes import fit, teacher_recipe
from flows.cli import add_config_arguments


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.npy"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    device = resolve_device(config.device)
    scratch = Path(tempfile.mkdtemp(prefix="kd-scaling-"))
    try:
        info = prepare_dataset(config.data, config.split, scratch / "data")
        dataset = load_dataset(info.path)
        torch.manual_seed(config.seed)
        teacher = build_model(config.teacher.model.name, info.in_channels, info.num_classes)
        spec = pipeline_cache_spec(config, "0" * 64, info.fingerprint)
        # The pipeline's teacher recipe, one epoch of it.
        recipe = teacher_recipe(config)
        train = recipe.train.model_copy(update={"epochs": 1})
        recipe = replace(recipe, train=train)
        epoch: dict[int, list[float]] = {1: [], 2: []}
        epoch_wall: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(args.repeats):
            for nproc in (1, 2):
                started = time.perf_counter()
                _, result = fit(recipe, dataset, device, nproc=nproc)
                epoch[nproc].append(result.history[0]["epoch_seconds"])
                epoch_wall[nproc].append(time.perf_counter() - started)
                print(
                    f"training, {nproc} process(es), repeat {repeat}: epoch "
                    f"{epoch[nproc][-1]:.2f} s, wall {epoch_wall[nproc][-1]:.2f} s",
                    flush=True,
                )
        seconds: dict[int, list[float]] = {1: [], 2: []}
        contents: dict[int, dict[str, bytes]] = {}
        for repeat in range(args.repeats):
            for workers in (1, 2):
                root = scratch / f"cache-{workers}-{repeat}"
                started = time.perf_counter()
                built = build_logit_cache(
                    teacher.eval(),
                    spec,
                    dataset,
                    root,
                    config.cache.chunk_rows,
                    device,
                    workers=workers,
                )
                seconds[workers].append(time.perf_counter() - started)
                contents[workers] = _files(Path(built.path))
                shutil.rmtree(root)
                print(
                    f"workers {workers}, repeat {repeat}: {seconds[workers][-1]:.2f} s", flush=True
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    median = {w: statistics.median(s) for w, s in seconds.items()}
    epoch_median = {n: statistics.median(s) for n, s in epoch.items()}
    epoch_wall_median = {n: statistics.median(s) for n, s in epoch_wall.items()}
    rows = len(dataset.splits["train"]) * config.cache.views
    report = {
        "what": "logit cache build, from scratch, wall time including process start-up",
        "teacher": config.teacher.model.name,
        "views": config.cache.views,
        "sample_views": rows,
        "device": str(device),
        "cores": os.cpu_count(),
        "cpu": cpu_info()["model"],
        "torch": torch.__version__,
        "training": {
            "epoch_seconds": epoch,
            "epoch_wall_seconds": epoch_wall,
            "median_epoch_seconds": epoch_median,
            "median_epoch_wall_seconds": epoch_wall_median,
            "speedup_2_vs_1": epoch_median[1] / epoch_median[2],
        },
        "cache": {
            "seconds": seconds,
            "median_seconds": median,
            "speedup_2_vs_1": median[1] / median[2],
            "identical_bytes": contents[1] == contents[2],
        },
    }
    write_json(args.out / "scaling.json", report)
    lines = [
        f"One training epoch: {config.teacher.model.name} teacher, batch "
        f"{train.batch_size}, {len(dataset.splits['train']):,} images, {device}, median of "
        f"{args.repeats}.",
        "",
        "| processes | epoch s (training) | speed-up | wall s incl. launch |",
        "|---:|---:|---:|---:|",
        *(
            f"| {n} | {epoch_median[n]:.2f} | {epoch_median[1] / epoch_median[n]:.2f}x | "
            f"{epoch_wall_median[n]:.2f} |"
            for n in (1, 2)
        ),
        "",
        f"Logit cache build: {config.teacher.model.name} teacher, {rows:,} sample-views, "
        f"{device}, {os.cpu_count()} cores ({report['cpu']}), median of {args.repeats}.",
        "",
        "| worker processes | build s (median) | sample-views/s | speed-up |",
        "|---:|---:|---:|---:|",
        *(
            f"| {w} | {median[w]:.2f} | {rows / median[w]:,.0f} | {median[1] / median[w]:.2f}x |"
            for w in (1, 2)
        ),
        "",
        f"Same bytes with 1 and 2 processes: {report['cache']['identical_bytes']}",
    ]
    write_text(args.out / "scaling.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if report["cache"]["identical_bytes"] else 1


if __name__ == "__main__":
    sys.exit(main())
