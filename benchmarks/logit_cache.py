"""What the logit cache buys, measured side by side in one process on the default pair.

    python benchmarks/logit_cache.py --out DIR

writes DIR/logit_cache.json and DIR/logit_cache.md:
- cache build throughput (samples x views / s) against pure teacher inference on the same
  (pre-augmented) inputs: ``build_vs_inference_ratio``;
- distillation epoch time from the cache against the usual online loop (teacher forward on
  every batch, same views, same student, same batch size): ``cached_vs_online_speedup``;
- distillation epoch time from the cache against the student on labels alone:
  ``cached_vs_student_only_ratio``;
- test accuracy of students distilled from the cache and from the live teacher on identical
  views, over several seeds;
- accuracy and storage for several K (views per sample).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.augment import render_views
from components.config import AugmentConfig, CacheConfig, PipelineConfig, load_config
from components.data import Dataset, load_dataset, normalize, prepare_dataset
from components.io import write_json, write_text
from components.logit_cache import (
    CacheSpec,
    LogitCache,
    build_logit_cache,
    open_logit_cache,
    pipeline_cache_spec,
)
from components.recipes import fit, student_recipe, teacher_recipe
from components.stats import mean_interval
from components.teachers import InputSpec, OnlineTeacher, TeacherView
from flows.cli import add_config_arguments

CPU = torch.device("cpu")


def train_student(
    config: PipelineConfig, dataset: Dataset, seed: int, teacher: Any | None
) -> tuple[float, float]:
    """(test accuracy, median epoch seconds) of the config's student, trained with the
    pipeline's recipe and training seed ``seed``; ``teacher``: cache, live teacher or None."""
    epoch_seconds: list[float] = []
    recipe = replace(student_recipe(config, distilled=teacher is not None), seed=seed)
    _, result = fit(
        recipe,
        dataset,
        CPU,
        targets=teacher,
        on_epoch=lambda epoch, metrics: epoch_seconds.append(metrics["epoch_seconds"]),
    )
    return result.final["test_accuracy"], statistics.median(epoch_seconds)


def inference_throughput(
    teacher: nn.Module, dataset: Dataset, spec: CacheSpec, chunk: int
) -> float:
    """Samples x views per second of the bare teacher forward on pre-made views."""
    train = dataset.splits["train"]
    policy = AugmentConfig(**spec.augment)

    def fetch(rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(dataset.images[train[rows]]))

    batches = []
    for start in range(0, len(train), chunk):
        rows = np.arange(start, min(start + chunk, len(train)))
        for view in range(spec.views):
            rendered = render_views(fetch, rows, train, view, policy, spec.view_seed)
            batches.append(normalize(rendered.images, dataset.info))
    started = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            teacher(batch)
    return len(train) * spec.views / (time.perf_counter() - started)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    add_config_arguments(parser)
    parser.add_argument(
        "--views", type=int, default=4, help="K for the speed and live-vs-cache runs"
    )
    parser.add_argument("--views-sweep", default="1,4,8", help="K values for accuracy vs storage")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed cache builds")
    args = parser.parse_args(argv)

    # Augmentation on for the students: the cache must hold the exact augmented views.
    base = load_config(args.config, [*args.overrides, "student.train.augment.enabled=true"])
    work = Path(tempfile.mkdtemp(prefix="kd-cache-bench-"))
    info = prepare_dataset(base.data, base.split, work / "data")
    dataset = load_dataset(info.path)
    print(f"dataset {info.fingerprint}: {info.split_sizes}", flush=True)

    teacher, teacher_result = fit(teacher_recipe(base), dataset, CPU)
    teacher_sha = "benchmark-teacher-seed-" + str(base.seed)
    print(f"teacher test accuracy {teacher_result.final['test_accuracy']:.4f}", flush=True)

    def with_views(views: int) -> PipelineConfig:
        return base.model_copy(
            update={"cache": CacheConfig(**{**base.cache.model_dump(), "views": views})}
        )

    def cache_for(views: int) -> tuple[LogitCache, float, int]:
        config = with_views(views)
        spec = pipeline_cache_spec(config, teacher_sha, info.fingerprint)
        built = build_logit_cache(
            teacher, spec, dataset, work / "cache", config.cache.chunk_rows, CPU
        )
        return open_logit_cache(Path(built.path)), built.build_seconds, built.bytes_per_sample_view

    # 1. build throughput against bare inference on the same inputs, both after a warm-up
    k = args.views
    with torch.no_grad():
        teacher(normalize(dataset.images[: base.cache.chunk_rows], dataset.info))
    cache, _, _ = cache_for(k)
    spec = CacheSpec(**cache.manifest["spec"])
    # Alternate fresh builds and bare inference, and take medians: single timings on a
    # shared 2-core machine swing by 20%.
    build_tputs, infer_tputs = [], []
    for repeat in range(args.repeats):
        timed = build_logit_cache(
            teacher, spec, dataset, work / f"timing-{repeat}", base.cache.chunk_rows, CPU
        )
        build_tputs.append(timed.rows * k / timed.build_seconds)
        infer_tputs.append(inference_throughput(teacher, dataset, spec, base.cache.chunk_rows))
    build_tput, infer_tput = statistics.median(build_tputs), statistics.median(infer_tputs)
    print(f"build {build_tput:,.0f}/s vs inference {infer_tput:,.0f}/s", flush=True)

    # 2-4. epoch times and accuracy: cache, live teacher, labels only
    live = OnlineTeacher(TeacherView(teacher, InputSpec.of_data(info), None), dataset, cache)
    runs: dict[str, list[tuple[float, float]]] = {"cached": [], "live": [], "labels": []}
    for seed in range(args.seeds):
        config_k = with_views(k)
        runs["cached"].append(train_student(config_k, dataset, seed, cache))
        runs["live"].append(train_student(config_k, dataset, seed, live))
        runs["labels"].append(train_student(config_k, dataset, seed, None))
        print(
            f"seed {seed}: "
            + ", ".join(f"{n} {r[-1][0]:.4f} ({r[-1][1]:.2f} s/epoch)" for n, r in runs.items()),
            flush=True,
        )
    epoch = {name: statistics.median(r[1] for r in rs) for name, rs in runs.items()}
    accuracy = {name: mean_std([r[0] for r in rs]) for name, rs in runs.items()}

    def interval(name: str) -> str:
        lo, hi = mean_interval([r[0] for r in runs[name]]).interval
        return f"[{lo:.4f}, {hi:.4f}]"

    # 5. K sweep: accuracy and storage
    sweep = []
    for views in [int(v) for v in args.views_sweep.split(",")]:
        cache_k, seconds_k, bytes_per_view = cache_for(views)
        acc = train_student(with_views(views), dataset, 0, cache_k)[0]
        sweep.append(
            {
                "views": views,
                "test_accuracy_seed0": acc,
                "bytes_per_sample_view": bytes_per_view,
                "cache_bytes": sum(a.nbytes for a in cache_k.arrays.values()),
                "build_seconds": seconds_k,
            }
        )
        print(f"K={views}: accuracy {acc:.4f}, {sweep[-1]['cache_bytes']:,} bytes", flush=True)

    report = {
        "build_vs_inference_ratio": build_tput / infer_tput,
        "cached_vs_online_speedup": epoch["live"] / epoch["cached"],
        "cached_vs_student_only_ratio": epoch["cached"] / epoch["labels"],
        "build_throughput_per_s": build_tput,
        "inference_throughput_per_s": infer_tput,
        "epoch_seconds": epoch,
        "test_accuracy": {n: {"mean": m, "std": s} for n, (m, s) in accuracy.items()},
        "teacher_test_accuracy": teacher_result.final["test_accuracy"],
        "views_sweep": sweep,
        "settings": {
            "views": k,
            "seeds": args.seeds,
            "timed_builds": args.repeats,
            "teacher": base.teacher.model.name,
            "student": base.student.model.name,
            "student_epochs": base.student.train.epochs,
            "batch_size": base.student.train.batch_size,
            "augment": base.student.train.augment.model_dump(),
            "distill": base.distill.model_dump(),
            "cache_dtype": base.cache.dtype,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    goals = [
        (
            "cache build vs bare teacher inference (throughput)",
            report["build_vs_inference_ratio"],
            ">= 0.9",
        ),
        (
            "distillation epoch: online teacher / cache (speed-up)",
            report["cached_vs_online_speedup"],
            ">= 3",
        ),
        (
            "distillation epoch: cache / labels only",
            report["cached_vs_student_only_ratio"],
            "<= 1.2",
        ),
    ]
    lines = [
        "# Logit cache benchmark",
        "",
        f"Default pair {base.teacher.model.name} -> {base.student.model.name}, K={k} views, "
        f"{base.student.train.epochs} epochs, batch {base.student.train.batch_size}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        "| measure | value | goal |",
        "|---|---:|---|",
        *(f"| {name} | {value:.2f} | {goal} |" for name, value, goal in goals),
        "",
        f"| student | epoch s (median) | test accuracy (mean ± std, {args.seeds} seeds) | "
        f"95% CI of the mean (t), n = {info.split_sizes['test']} test images per seed |",
        "|---|---:|---|---|",
        *(
            f"| {name} | {epoch[key]:.3f} | {accuracy[key][0]:.4f} ± {accuracy[key][1]:.4f} | "
            f"{interval(key)} |"
            for name, key in (
                ("distilled from cache", "cached"),
                ("distilled from live teacher", "live"),
                ("labels only", "labels"),
            )
        ),
        "",
        f"Teacher test accuracy {teacher_result.final['test_accuracy']:.4f}.",
        "",
        "| K views | test accuracy (seed 0) | bytes per sample-view | cache bytes | build s |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {s['views']} | {s['test_accuracy_seed0']:.4f} | {s['bytes_per_sample_view']} "
            f"| {s['cache_bytes']:,} | {s['build_seconds']:.1f} |"
            for s in sweep
        ),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "logit_cache.json", report)
    markdown = "\n".join(lines) + "\n"
    write_text(args.out / "logit_cache.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
