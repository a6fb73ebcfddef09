"""A large teacher from elsewhere: what ONNX Runtime and the logit cache buy.

    python benchmarks/teacher_sources.py --out DIR [--teacher resnet18] [--size 224]
        [--train-images 1024] [--views 1] [--config FILE] [--set key=value ...]

The teacher is torchvision's ``--teacher`` at its native input (3 x size x size, ImageNet
statistics, 1000 classes, the digits mapped to its first ten outputs), with weights this
script saves itself (nothing is downloaded; random weights cost what trained ones cost).
On the first ``--train-images`` training images of the config's data, in one process:

1. the logit cache built with the PyTorch teacher, then with the same teacher exported to
   ONNX and run by ONNX Runtime, on the same replayed views (their logits are compared):
   ``onnx_vs_torch_cache_build_ratio`` = ONNX Runtime sample-views/s over PyTorch's;
2. one distillation epoch of the config's student from the cache, and the same epoch with
   the teacher run online on every batch (the usual loop):
   ``cached_vs_online_speedup_large_teacher`` = online epoch seconds over cached (goal >= 10).

Writes DIR/teacher_sources.json and DIR/teacher_sources.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.config import load_config
from components.data import Dataset, load_dataset, prepare_dataset
from components.io import write_json, write_text
from components.latency import environment
from components.logit_cache import CacheSpec, build_logit_cache, open_logit_cache
from components.models import build_model, count_parameters
from components.online_teacher import OnlineTeacher
from components.onnx_export import export_graph
from components.recipes import fit, student_recipe
from components.teachers import InputSpec, OnnxModule, TeacherView, prepare
from flows.cli import add_config_arguments

CPU = torch.device("cpu")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def subset(dataset: Dataset, train_images: int) -> Dataset:
    """The dataset with only its first ``train_images`` training images (same fingerprint:
    the cache and the student see the same subset)."""
    splits = {**dataset.splits, "train": dataset.splits["train"][:train_images]}
    return dataclasses.replace(dataset, splits=splits)


def epoch_seconds(config: Any, dataset: Dataset, targets: Any) -> float:
    seconds: list[float] = []
    fit(
        student_recipe(config, distilled=True),
        dataset,
        CPU,
        teacher_logits=targets,
        on_epoch=lambda epoch, metrics: seconds.append(metrics["epoch_seconds"]),
    )
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher", default="resnet18", help="a torchvision architecture")
    parser.add_argument("--size", type=int, default=224, help="the teacher's input size")
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--views", type=int, default=1, help="cached views per image")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    overrides = [*args.overrides, f"cache.views={args.views}", "student.train.epochs=1"]
    if args.views > 1:
        overrides.append("student.train.augment.enabled=true")
    config = load_config(args.config, overrides)
    work = Path(tempfile.mkdtemp(prefix="kd-teacher-sources-"))
    info = prepare_dataset(config.data, config.split, work / "data")
    dataset = subset(load_dataset(info.path), args.train_images)

    # The teacher as torchvision builds it, behind its own input recipe and class map.
    torch.manual_seed(0)
    teacher = build_model(f"torchvision:{args.teacher}", 3, 1000, args.size, native=True).eval()
    spec = InputSpec(3, (args.size, args.size), *IMAGENET)
    index = list(range(info.num_classes))
    spec_args = (config.student.train.augment, config.seed, config.cache)
    cache_spec = CacheSpec.create(
        "benchmark-teacher", info.fingerprint, *spec_args, spec.as_dict(), index
    )
    onnx_path = work / "teacher.onnx"
    example = prepare(torch.zeros(2, 3, args.size, args.size), spec).contiguous()
    export_graph(teacher, example, onnx_path, opset=18)

    # 1. the cache, built by PyTorch and by ONNX Runtime on the same views
    builds: dict[str, dict[str, float]] = {}
    logits: dict[str, np.ndarray] = {}
    for runtime, model in (("pytorch", teacher), ("onnxruntime", OnnxModule(onnx_path))):
        view = TeacherView(model, spec, index)
        started = time.perf_counter()
        built = build_logit_cache(
            view,
            replace(cache_spec, runtime=runtime),
            dataset,
            work / f"cache-{runtime}",
            config.cache.chunk_rows,
            CPU,
            batch_size=config.cache.batch_size,
        )
        seconds = time.perf_counter() - started
        sample_views = built.rows * built.views
        builds[runtime] = {"seconds": seconds, "sample_views_per_s": sample_views / seconds}
        logits[runtime] = np.asarray(open_logit_cache(Path(built.path)).arrays["logits"], float)
        print(f"{runtime}: {sample_views / seconds:,.1f} sample-views/s", flush=True)
    max_diff = float(np.abs(logits["pytorch"] - logits["onnxruntime"]).max())

    # 2. one distillation epoch from the cache, and with the teacher online
    cache = open_logit_cache(work / "cache-pytorch" / cache_spec.key)
    cached = epoch_seconds(config, dataset, cache)
    online = epoch_seconds(
        config, dataset, OnlineTeacher(TeacherView(teacher, spec, index), dataset, cache)
    )
    print(f"epoch: {cached:.2f} s from the cache, {online:.2f} s online", flush=True)

    student = build_model(config.student.model.name, info.in_channels, info.num_classes)
    report = {
        "onnx_vs_torch_cache_build_ratio": (
            builds["onnxruntime"]["sample_views_per_s"] / builds["pytorch"]["sample_views_per_s"]
        ),
        "cached_vs_online_speedup_large_teacher": online / cached,
        "cache_build": builds,
        "max_abs_logit_difference_onnx_vs_torch": max_diff,
        "epoch_seconds": {"cached": cached, "online": online},
        "settings": {
            "teacher": f"torchvision:{args.teacher}",
            "teacher_parameters": count_parameters(teacher),
            "teacher_input": spec.as_dict(),
            "student": config.student.model.name,
            "student_parameters": count_parameters(student),
            "train_images": len(dataset.splits["train"]),
            "views": args.views,
            "batch_size": config.student.train.batch_size,
            "torch_threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
        },
        "environment": environment(),
    }
    lines = [
        "# A large teacher from elsewhere",
        "",
        f"Teacher torchvision `{args.teacher}` at {args.size}x{args.size}x3 "
        f"({count_parameters(teacher):,} parameters, ImageNet statistics, 10 of its 1000 "
        f"outputs mapped to the digits) -> student `{config.student.model.name}` "
        f"({count_parameters(student):,}), {len(dataset.splits['train']):,} training images x "
        f"{args.views} view(s), {torch.get_num_threads()} threads, {os.cpu_count()} cores, CPU.",
        "",
        "| measure | value | goal |",
        "|---|---:|---|",
        f"| logit cache build, PyTorch (sample-views/s) | "
        f"{builds['pytorch']['sample_views_per_s']:,.1f} | |",
        f"| logit cache build, ONNX Runtime (sample-views/s) | "
        f"{builds['onnxruntime']['sample_views_per_s']:,.1f} | |",
        f"| onnx_vs_torch_cache_build_ratio | {report['onnx_vs_torch_cache_build_ratio']:.2f} | |",
        f"| max abs logit difference, ONNX Runtime vs PyTorch | {max_diff:.2e} | |",
        f"| distillation epoch from the cache (s) | {cached:.2f} | |",
        f"| distillation epoch, teacher online (s) | {online:.2f} | |",
        f"| cached_vs_online_speedup_large_teacher | "
        f"{report['cached_vs_online_speedup_large_teacher']:.1f} | >= 10 |",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "teacher_sources.json", report)
    write_text(args.out / "teacher_sources.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
