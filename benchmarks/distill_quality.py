"""Does distillation beat the same student trained alone? Measured honestly.

    python benchmarks/distill_quality.py --out DIR [--config FILE] [--set key=value ...]
        [--seeds 3] [--teacher-seeds 2] [--methods config,hinton,...]

On the config's data split (the default data unless told otherwise): ``--teacher-seeds``
teachers trained with the pipeline's recipe; for every student seed the label-only baseline,
and for every teacher and student seed the distilled student of every method, each with the
config's budget (same epochs, optimizer, views and seed; only the targets differ).

Validation chooses, test reports: ``chosen_on_validation`` is the method with the best mean
validation accuracy; test figures are reported beside it, never used to choose. For each
method, the paired difference (distilled minus its baseline of the same student seed) over
every teacher and student seed, with a 95% Student-t interval, on validation and on test;
``kd_error_reduction`` = 1 - (mean test error of the config's own method / its baseline's).
Writes DIR/distill_quality.json and DIR/distill_quality.md.
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

from components.augment import stream_seed
from components.config import PipelineConfig, load_config
from components.data import Dataset, load_dataset, prepare_dataset
from components.io import sha256_json, write_json, write_text
from components.logit_cache import CacheSpec, LogitCache, build_logit_cache, open_logit_cache
from components.models import build_model, count_parameters
from components.recipes import fit, student_recipe, teacher_recipe
from components.stats import format_accuracy, mean_interval
from components.training import resolve_device
from flows.cli import add_config_arguments

# Method name -> overrides laid over the base config. "config" is the base config's own.
METHODS: dict[str, list[str]] = {
    "config": [],
    "hinton": ["distill.kind=hinton"],
    # Logit standardisation wants a lower temperature and a heavier KD term (Sun et al. 2024
    # use T = 2 and KD:CE weights of 9:0.1 for KD); T = 4, alpha = 0.7 loses to the baseline.
    "hinton+ls": [
        "distill.kind=hinton",
        "distill.standardize=true",
        "distill.temperature=2",
        "distill.alpha=0.9",
    ],
    "dkd": ["distill.kind=dkd"],
    "dkd+ls": ["distill.kind=dkd", "distill.standardize=true"],
    "hinton+mixup": [
        "distill.kind=hinton",
        "student.train.augment.enabled=true",
        "student.train.augment.mixup_alpha=0.2",
    ],
}


def student_run(
    config: PipelineConfig, dataset: Dataset, seed: int, cache: LogitCache | None
) -> tuple[float, float]:
    """(validation, test) accuracy of the configured student, distilled from ``cache`` or on
    labels alone, with the pipeline's recipe and training seed ``seed`` (the views stay the
    config's)."""
    recipe = replace(student_recipe(config, distilled=cache is not None), seed=seed)
    _, result = fit(recipe, dataset, resolve_device(config.device), targets=cache)
    return result.final["val_accuracy"], result.final["test_accuracy"]


def figures(runs: list[tuple[float, float]], baseline: list[tuple[float, float]]) -> dict[str, Any]:
    """Means, and paired differences against the baseline run of the same student seed
    (``baseline`` is indexed by student seed, ``runs`` cycle through the student seeds)."""
    val, test = [r[0] for r in runs], [r[1] for r in runs]
    base_val = [baseline[i % len(baseline)][0] for i in range(len(runs))]
    base_test = [baseline[i % len(baseline)][1] for i in range(len(runs))]
    return {
        "val_accuracy_mean": statistics.mean(val),
        "test_accuracy_mean": statistics.mean(test),
        "test_error_mean": 1 - statistics.mean(test),
        "test_accuracy_std": statistics.stdev(test) if len(test) > 1 else 0.0,
        "paired_val_difference": mean_interval(np.subtract(val, base_val)).as_dict(),
        "paired_test_difference": mean_interval(np.subtract(test, base_test)).as_dict(),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    add_config_arguments(parser)
    parser.add_argument("--seeds", type=int, default=3, help="student seeds")
    parser.add_argument("--teacher-seeds", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated names")
    args = parser.parse_args(argv)

    base = load_config(args.config, args.overrides)
    methods = {
        name: load_config(args.config, [*args.overrides, *METHODS[name]])
        for name in args.methods.split(",")
    }
    device = resolve_device(base.device)
    work = Path(tempfile.mkdtemp(prefix="kd-quality-"))
    info = prepare_dataset(base.data, base.split, work / "data")
    dataset = load_dataset(info.path)
    started = time.perf_counter()

    # Teachers as the pipeline trains them, one per teacher seed.
    teachers = {}
    for t in range(args.teacher_seeds):
        seed = base.seed + t
        recipe = replace(
            teacher_recipe(base), seed=seed, view_seed=stream_seed(seed, "teacher-views")
        )
        model, result = fit(recipe, dataset, device)
        teachers[t] = (model, result.final)
        print(f"teacher seed {seed}: test accuracy {result.final['test_accuracy']:.4f}", flush=True)

    caches: dict[str, LogitCache] = {}

    def cache_for(config: PipelineConfig, t: int) -> LogitCache:
        teacher_id = sha256_json(
            {"benchmark-teacher": base.teacher.model_dump(mode="json"), "t": t}
        )
        spec = CacheSpec.create(
            teacher_id, info.fingerprint, config.student.train.augment, config.seed, config.cache
        )
        if spec.key not in caches:
            built = build_logit_cache(
                teachers[t][0], spec, dataset, work / "cache", config.cache.chunk_rows, device
            )
            caches[spec.key] = open_logit_cache(Path(built.path))
        return caches[spec.key]

    # Baselines per view policy (views, augmentation, student budget): the honest control.
    def policy(config: PipelineConfig) -> str:
        return sha256_json([config.student.model_dump(mode="json"), config.cache.views])

    student_seeds = range(args.seeds)
    baselines: dict[str, list[tuple[float, float]]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, config in methods.items():
        key = policy(config)
        if key not in baselines:
            baselines[key] = [student_run(config, dataset, s, None) for s in student_seeds]
            print(f"baseline ({name} views): {baselines[key]}", flush=True)
        runs = [
            student_run(config, dataset, s, cache_for(config, t))
            for t in teachers
            for s in student_seeds
        ]
        done = figures(runs, baselines[key])
        base_error = 1 - statistics.mean(r[1] for r in baselines[key])
        done |= {
            "baseline": figures(baselines[key], baselines[key]),
            "error_reduction": 1 - done["test_error_mean"] / base_error if base_error else 0.0,
            "distill": config.distill.model_dump(mode="json"),
            "augment": config.student.train.augment.model_dump(mode="json"),
        }
        results[name] = done
        print(f"{name}: val {done['val_accuracy_mean']:.4f}, test {done['test_accuracy_mean']:.4f}")

    # Validation chooses; test is reported beside it.
    chosen = max(results, key=lambda name: results[name]["val_accuracy_mean"])
    headline = results.get("config") or next(iter(results.values()))
    baseline = headline["baseline"]
    first_teacher = teachers[0][0]
    student_params = count_parameters(
        build_model(base.student.model.name, info.in_channels, info.num_classes)
    )
    n_val, n_test = info.split_sizes["val"], info.split_sizes["test"]
    report = {
        "kd_error_reduction": headline["error_reduction"],
        "paired_test_difference": headline["paired_test_difference"],
        "chosen_on_validation": chosen,
        "teacher_test_accuracy": statistics.mean(t[1]["test_accuracy"] for t in teachers.values()),
        "baseline": baseline,
        "methods": results,
        "compression_ratio": count_parameters(first_teacher) / student_params,
        "settings": {
            "seeds": args.seeds,
            "teacher_seeds": args.teacher_seeds,
            "overrides": args.overrides,
            "teacher": base.teacher.model_dump(mode="json"),
            "student": base.student.model_dump(mode="json"),
            "distill": base.distill.model_dump(mode="json"),
            "cache": base.cache.model_dump(mode="json"),
            "dataset_fingerprint": info.fingerprint,
            "val_examples": n_val,
            "test_examples": n_test,
            "wall_seconds": time.perf_counter() - started,
            "torch": torch.__version__,
        },
    }

    def diff(r: dict[str, Any], split: str) -> str:
        d = r[f"paired_{split}_difference"]
        lo, hi = d["interval"]
        return f"{d['estimate'] * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}]"

    runs = args.seeds * args.teacher_seeds
    teacher_line = ", ".join(
        format_accuracy(t[1]["test_accuracy"], n_test) for t in teachers.values()
    )
    lines = [
        "# Distillation quality",
        "",
        f"Teacher {base.teacher.model.name} ({count_parameters(first_teacher):,} parameters), "
        f"student {base.student.model.name} ({student_params:,}), "
        f"{base.student.train.epochs} epochs, {base.cache.views} cached views; "
        f"{args.teacher_seeds} teacher seeds x {args.seeds} student seeds; validation split of "
        f"{n_val} images (chooses), test split of {n_test} (reported).",
        "",
        f"Teachers' test accuracy [95% CI]: {teacher_line}.",
        "",
        "| student | val accuracy (mean) | test accuracy (mean ± std) | paired val difference, "
        "points [95% CI] | paired test difference, points [95% CI] | test error reduction |",
        "|---|---:|---:|---:|---:|---:|",
        f"| baseline (labels only, {args.seeds} seeds) | {baseline['val_accuracy_mean']:.4f} | "
        f"{baseline['test_accuracy_mean']:.4f} ± {baseline['test_accuracy_std']:.4f} | | | |",
        *(
            f"| {name} ({runs} runs) | {r['val_accuracy_mean']:.4f} | "
            f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f} | {diff(r, 'val')} | "
            f"{diff(r, 'test')} | {r['error_reduction']:.3f} |"
            for name, r in results.items()
        ),
        "",
        f"Chosen on validation: `{chosen}`. kd_error_reduction (the config's own method, "
        f"`{base.distill.kind}`, on test): {report['kd_error_reduction']:.3f}; its paired test "
        f"difference {diff(headline, 'test')} points.",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "distill_quality.json", report)
    markdown = "\n".join(lines)
    write_text(args.out / "distill_quality.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
