"""Logit-cache building with 1 and 2 worker processes on this machine.

    python benchmarks/scaling.py --out DIR [--repeats 3] [--config FILE] [--set key=value ...]

Builds the configured teacher's cache (default: resnet_small, 8 views of the 4,000 training
images) from scratch with ``cache.workers`` = 1 and 2 (the workers are launched with
torch.distributed's elastic launcher, standalone rendezvous), ``--repeats`` times each,
alternating, and checks that both give the same bytes. The teacher is untrained: the cost of a
forward pass does not depend on the weights. Writes DIR/scaling.json and DIR/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from components.benchmark import cpu_info
from components.config import load_config
from components.data import load_dataset, prepare_dataset
from components.io import write_json, write_text
from components.logit_cache import CacheSpec, build_logit_cache
from components.models import build_model
from components.training import resolve_device
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
        spec = CacheSpec.create(
            "0" * 64, info.fingerprint, config.student.train.augment, config.seed, config.cache
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
        "seconds": seconds,
        "median_seconds": median,
        "speedup_2_vs_1": median[1] / median[2],
        "identical_bytes": contents[1] == contents[2],
    }
    write_json(args.out / "scaling.json", report)
    lines = [
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
        f"Same bytes with 1 and 2 workers: {report['identical_bytes']}",
    ]
    write_text(args.out / "scaling.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if report["identical_bytes"] else 1


if __name__ == "__main__":
    sys.exit(main())
