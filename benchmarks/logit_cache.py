"""What the logit cache buys, measured side by side in one process on the default pair.

    python benchmarks/logit_cache.py --out DIR

writes DIR/logit_cache.json and DIR/logit_cache.md:
- cache build throughput (samples x views / s, the config's ``cache.runtime`` and
  ``cache.batch_size``) against the best bare teacher inference on the same pre-made views,
  over batch sizes 32-512 and both runtimes (PyTorch eager, ONNX Runtime):
  ``build_vs_best_inference_ratio``;
- distillation epoch time from the cache against the usual online loop (teacher forward on
  every batch the loop has rendered, same views, same student, same batch size):
  ``cached_vs_online_speedup``;
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
from components.devices import place
from components.io import write_json, write_text
from components.logit_cache import (
    CacheSpec,
    LogitCache,
    build_logit_cache,
    open_logit_cache,
    pipeline_cache_spec,
)
from components.online_teacher import OnlineTeacher
from components.recipes import fit, student_recipe, teacher_recipe
from components.stats import mean_interval
from components.teachers import InputSpec, TeacherView, onnx_twin
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
        teacher_logits=teacher,
        on_epoch=lambda epoch, metrics: epoch_seconds.append(metrics["epoch_seconds"]),
    )
    return result.final["test_accuracy"], statistics.median(epoch_seconds)


INFERENCE_BATCHES = (32, 64, 128, 256, 512)
RUNTIMES = ("pytorch", "onnxruntime")


def inference_throughputs(
    teacher: nn.Module, dataset: Dataset, spec: CacheSpec, work: Path
) -> dict[str, dict[int, float]]:
    """Samples x views per second of the bare teacher forward on pre-made, normalised views
    (the spec's K views of every training sample), per runtime (PyTorch eager, channels-last;
    ONNX Runtime on the teacher's exported twin) and batch size: the teacher's full speed."""
    train = dataset.splits["train"]
    policy = AugmentConfig(**spec.augment)

    def fetch(rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(dataset.images[train[rows]]))

    pixels = [
        render_views(
            fetch, np.arange(len(train)), dataset.train_ids(), v, policy, spec.view_seed
        ).images
        for v in range(spec.views)
    ]
    views = [normalize(p, dataset.info) for p in pixels]
    model = place(teacher, CPU).eval()
    identity = InputSpec(
        channels=dataset.info.in_channels,
        image_size=dataset.info.image_size,
        mean=(0.0,) * dataset.info.in_channels,
        std=(1.0,) * dataset.info.in_channels,
    )  # the views are normalised already: the twin is the bare model
    twin, _ = onnx_twin(TeacherView(model, identity, None), work / "teacher.onnx", views[0][:64])
    runners = {"pytorch": model, "onnxruntime": twin.model}
    table: dict[str, dict[int, float]] = {}
    with torch.inference_mode():
        for runtime in RUNTIMES:
            run = runners[runtime]
            run(views[0][:64])  # warm-up
            table[runtime] = {}
            for batch in INFERENCE_BATCHES:
                started = time.perf_counter()
                for images in views:
                    for b in range(0, len(images), batch):
                        run(images[b : b + batch])
                table[runtime][batch] = len(train) * spec.views / (time.perf_counter() - started)
    return table


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

    # 1. build throughput (the config's runtime and forward batch) against the best bare
    # teacher inference over batch sizes and both runtimes, on the same views
    k = args.views
    cache, _, _ = cache_for(k)
    spec = CacheSpec(**cache.manifest["spec"])
    # Alternate fresh builds and bare inference, and take medians: single timings on a
    # shared 2-core machine swing by 20%.
    build_tputs: list[float] = []
    tables: list[dict[str, dict[int, float]]] = []
    for repeat in range(args.repeats):
        timed = build_logit_cache(
            teacher,
            spec,
            dataset,
            work / f"timing-{repeat}",
            base.cache.chunk_rows,
            CPU,
            batch_size=base.cache.batch_size,
        )
        build_tputs.append(timed.rows * k / timed.build_seconds)
        tables.append(inference_throughputs(teacher, dataset, spec, work / f"timing-{repeat}"))
    build_tput = statistics.median(build_tputs)
    inference = {
        runtime: {b: statistics.median(t[runtime][b] for t in tables) for b in INFERENCE_BATCHES}
        for runtime in RUNTIMES
    }
    best_runtime, best_batch = max(
        ((r, b) for r in RUNTIMES for b in INFERENCE_BATCHES),
        key=lambda rb: inference[rb[0]][rb[1]],
    )
    best_tput = inference[best_runtime][best_batch]
    print(f"build {build_tput:,.0f}/s vs best inference {best_tput:,.0f}/s", flush=True)

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
        "build_vs_best_inference_ratio": build_tput / best_tput,
        "best_inference": {
            "runtime": best_runtime,
            "batch_size": best_batch,
            "sample_views_per_s": best_tput,
        },
        "inference_sample_views_per_s": inference,
        "build_runtime": spec.runtime,
        "build_batch_size": base.cache.batch_size,
        "cached_vs_online_speedup": epoch["live"] / epoch["cached"],
        "cached_vs_student_only_ratio": epoch["cached"] / epoch["labels"],
        "build_throughput_per_s": build_tput,
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
            f"cache build ({spec.runtime}, batch {base.cache.batch_size}) vs the best bare "
            f"teacher inference ({best_runtime}, batch {best_batch}), throughput",
            report["build_vs_best_inference_ratio"],
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
        f"Bare teacher inference on the same {k} pre-made views of every training sample "
        f"(sample-views/s, median of {args.repeats}); the build: {build_tput:,.0f}.",
        "",
        "| runtime | " + " | ".join(f"batch {b}" for b in INFERENCE_BATCHES) + " |",
        "|---|" + "---:|" * len(INFERENCE_BATCHES),
        *(
            f"| {runtime} | "
            + " | ".join(f"{inference[runtime][b]:,.0f}" for b in INFERENCE_BATCHES)
            + " |"
            for runtime in RUNTIMES
        ),
        "",
        "The online loop runs the teacher on each batch the training loop has already "
        "rendered (no second rendering).",
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
