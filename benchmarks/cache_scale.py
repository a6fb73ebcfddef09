"""Would the logit cache carry ImageNet? A cache of ImageNet-1k's shape, built and read back.

    python benchmarks/cache_scale.py --out DIR [--fraction 0.1] [--batch 256]

The shape: 1,281,167 training samples x 10 views x 1,000 classes, top-10 storage at T = 1 (the
ImageNet setting of the DKD / MLKD papers), float16 values. The teacher is a cheap stand-in (a
fixed random linear map of 4x4 single-channel images to 1,000 logits, scaled to a peaked
distribution like a trained classifier's), so the figures are those of the cache machinery
itself: rendering the replayed views, top-k and the leftover log-sum-exp, the memory-mapped
writes and the chunk checksums. A real teacher's forward adds its own time (see
logit_cache.py's ``build_vs_best_inference_ratio`` for how close the build gets to it).

The cache is built by ``components.logit_cache.build_logit_cache``, the function the
``logit-cache`` stage calls, for ``--fraction`` of the rows (default 1: all 12.8 M
sample-views, about 0.5 GiB on disk and a few minutes on 2 cores); with a smaller fraction,
bytes per sample-view are still the layout's, so the full size is exact, and the full build
time is extrapolated linearly (the build is chunk by chunk, each chunk the same work).

Reads, as a training epoch makes them, through ``LogitCache.teacher`` (what the training
loop calls): every row once in shuffled order in batches of ``--batch``, each row at the view
``choose_views`` picks for the epoch (random order), against the same rows in stored order
(sequential). First from the page cache (the file read once), then from a cold file: the
cache's pages dropped with ``posix_fadvise(DONTNEED)`` (checked with ``fincore`` where
util-linux has it) and read in random order for ``--cold-seconds``.

Goal: random-order reads from the page cache at >= 30,000 sample-views/s, ten times what one
modern GPU trains a ResNet-18 on ImageNet at (about 3,000 images/s). Writes
DIR/cache_scale.json (``random_read_sample_views_per_s``) and DIR/cache_scale.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.augment import choose_views
from components.config import AugmentConfig, CacheConfig
from components.data import Dataset, DatasetInfo
from components.io import write_json, write_text
from components.logit_cache import CacheSpec, LogitCache, build_logit_cache, open_logit_cache

IMAGENET_TRAIN = 1_281_167
VIEWS = 10
CLASSES = 1_000
TOP_K = 10
TEMPERATURE = 1.0
GOAL = 30_000  # sample-views/s: ten times one GPU's ResNet-18 training rate on ImageNet
GPU_TRAINING_RATE = 3_000
CPU = torch.device("cpu")


def stand_in(rows: int, seed: int) -> tuple[Dataset, nn.Module]:
    """A dataset of ``rows`` random 4x4 images over 1,000 classes, and the stand-in teacher."""
    generator = np.random.default_rng(seed)
    images = generator.integers(0, 256, size=(rows, 1, 4, 4), dtype=np.uint8)
    info = DatasetInfo(
        path="",
        fingerprint=f"imagenet-shaped-stand-in-{rows}-{seed}",
        num_classes=CLASSES,
        in_channels=1,
        image_size=(4, 4),
        class_names=[str(c) for c in range(CLASSES)],
        mean=[127.5],
        std=[73.9],
        split_sizes={"train": rows},
    )
    dataset = Dataset(
        info=info,
        images=images,
        labels=generator.integers(0, CLASSES, size=rows),
        splits={"train": np.arange(rows)},
    )
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, CLASSES))
    with torch.no_grad():
        teacher[1].weight.mul_(8.0)  # peaked logits: a few classes carry most of the mass
    return dataset, teacher.eval()


def epoch_reads(
    cache: LogitCache, order: np.ndarray, batch: int, epoch: int, seconds: float | None = None
) -> tuple[float, int]:
    """Sample-views/s of reading ``order``'s rows in batches, each at its view for ``epoch``
    (stops after ``seconds`` when given); returns (rate, sample-views read)."""
    read = 0
    started = time.perf_counter()
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        views = choose_views(cache.spec.view_seed, rows, epoch, cache.views)
        cache.batch_logits(rows, views)
        read += len(rows)
        if seconds is not None and time.perf_counter() - started > seconds:
            break
    return read / (time.perf_counter() - started), read


def drop_from_page_cache(directory: Path) -> str:
    """Evict the cache's files from the page cache; what ``fincore`` says is left."""
    for path in directory.glob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if shutil.which("fincore") is None:
        return "fincore not available: eviction not checked"
    listed = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES,FILE"]
        + [str(p) for p in sorted(directory.glob("*.npy"))],
        capture_output=True,
        text=True,
    )
    resident = [line.split() for line in listed.stdout.splitlines() if line.strip()]
    return ", ".join(f"{Path(name).name} {size}" for size, name in resident) or listed.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=1.0, help="of ImageNet's rows built")
    parser.add_argument("--batch", type=int, default=256, help="rows per training batch")
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--cold-seconds", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")

    rows = max(args.chunk_rows, round(IMAGENET_TRAIN * args.fraction))
    dataset, teacher = stand_in(rows, args.seed)
    spec = CacheSpec.create(
        teacher_sha256="imagenet-shaped-stand-in",
        dataset_fingerprint=dataset.info.fingerprint,
        augment=AugmentConfig(crop_padding=1),
        view_seed=args.seed,
        config=CacheConfig(views=VIEWS, storage="topk", top_k=TOP_K, dtype="float16"),
        readings=[(TEMPERATURE, False)],
    )
    work = Path(tempfile.mkdtemp(prefix="kd-cache-scale-", dir=args.work))
    try:
        # 1. build (through the pipeline's function), extrapolated to every row
        print(f"building {rows:,} rows x {VIEWS} views x {CLASSES} classes, top-{TOP_K}")
        started = time.perf_counter()
        info = build_logit_cache(teacher, spec, dataset, work, args.chunk_rows, CPU)
        build_wall = time.perf_counter() - started
        cache = open_logit_cache(Path(info.path))  # verifies every chunk: reads the file once
        stored = sum(a.nbytes for a in cache.arrays.values())
        build_rate = rows * VIEWS / build_wall
        full_bytes = IMAGENET_TRAIN * VIEWS * info.bytes_per_sample_view
        print(f"built in {build_wall:.1f} s ({build_rate:,.0f} sample-views/s), {stored:,} bytes")

        # 2. an epoch's reads from the page cache: random order against stored order
        shuffled = np.random.default_rng(args.seed).permutation(rows)
        in_order = np.arange(rows)
        epoch_reads(cache, shuffled[: 50 * args.batch], args.batch, 0)  # warm-up
        random_rate, _ = epoch_reads(cache, shuffled, args.batch, 1)
        sequential_rate, _ = epoch_reads(cache, in_order, args.batch, 1)
        print(f"page cache: random {random_rate:,.0f}/s, sequential {sequential_rate:,.0f}/s")

        # 3. random-order reads from a cold file
        del cache
        resident = drop_from_page_cache(Path(info.path))
        cold_cache = open_logit_cache(Path(info.path), verify=False)
        cold_order = np.random.default_rng(args.seed + 1).permutation(rows)
        cold_rate, cold_read = epoch_reads(
            cold_cache, cold_order, args.batch, 2, seconds=args.cold_seconds
        )
        print(f"cold file: random {cold_rate:,.0f}/s over {cold_read:,} sample-views")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report: dict[str, Any] = {
        "random_read_sample_views_per_s": random_rate,
        "sequential_read_sample_views_per_s": sequential_rate,
        "random_vs_sequential_ratio": random_rate / sequential_rate,
        "cold_random_read_sample_views_per_s": cold_rate,
        "cold_sample_views_read": cold_read,
        "page_cache_after_eviction": resident,
        "goal_random_read_sample_views_per_s": GOAL,
        "goal_met": random_rate >= GOAL,
        "bytes_per_sample_view": info.bytes_per_sample_view,
        "full_cache_bytes": full_bytes,
        "built_rows": rows,
        "built_fraction": rows / IMAGENET_TRAIN,
        "built_bytes": stored,
        "build_sample_views_per_s": build_rate,
        "build_seconds": build_wall,
        "full_build_seconds_extrapolated": IMAGENET_TRAIN * VIEWS / build_rate,
        "settings": {
            "samples": IMAGENET_TRAIN,
            "views": VIEWS,
            "classes": CLASSES,
            "top_k": TOP_K,
            "temperature": TEMPERATURE,
            "dtype": "float16",
            "batch_rows": args.batch,
            "chunk_rows": args.chunk_rows,
            "cold_seconds": args.cold_seconds,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
    }
    gib, whole = 1024**3, rows == IMAGENET_TRAIN
    lines = [
        "# Logit cache at ImageNet scale",
        "",
        f"ImageNet-1k's shape: {IMAGENET_TRAIN:,} samples x {VIEWS} views x {CLASSES:,} "
        f"classes, top-{TOP_K} storage at T = {TEMPERATURE:g}, float16 values; a stand-in "
        f"teacher (random linear map), so the build figures are the cache's own cost. Built: "
        f"{rows:,} rows ({rows / IMAGENET_TRAIN:.1%} of ImageNet), through "
        f"`build_logit_cache`{'' if whole else '; full-size figures extrapolated from it'}. "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores.",
        "",
        "| measure | value | goal |",
        "|---|---:|---|",
        f"| bytes per sample-view | {info.bytes_per_sample_view} | |",
        f"| full cache (1.28 M x 10) | {full_bytes / gib:.2f} GiB ({full_bytes:,} bytes) | |",
        f"| build, sample-views/s (measured on {rows:,} rows) | {build_rate:,.0f} | |",
        f"| full build, {'measured' if whole else 'extrapolated'} | "
        f"{IMAGENET_TRAIN * VIEWS / build_rate / 60:.1f} min | |",
        f"| **random-order epoch reads, page cache (sample-views/s)** | **{random_rate:,.0f}** "
        f"| >= {GOAL:,} ({GOAL // GPU_TRAINING_RATE}x a GPU's {GPU_TRAINING_RATE:,} images/s) |",
        f"| sequential epoch reads, page cache (sample-views/s) | {sequential_rate:,.0f} | |",
        f"| random / sequential | {random_rate / sequential_rate:.2f} | |",
        f"| random-order reads, cold file (sample-views/s, {cold_read:,} read) | "
        f"{cold_rate:,.0f} | |",
        "",
        f"Reads go through `LogitCache.teacher` in batches of {args.batch} rows, each row at its "
        f"epoch's view. Cold: the files' pages dropped from this machine's page cache first "
        f"(fincore, bytes resident after: {resident}); on a virtual machine the host may still "
        "cache the disk, so a cold read here is a best case for a local disk.",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "cache_scale.json", report)
    write_text(args.out / "cache_scale.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
