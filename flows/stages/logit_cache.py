"""``logit-cache``: the teacher's logits on K replayed views of every training sample.

The cache is content-addressed by its own key (components/logit_cache.py): teacher weights,
dataset, view policy and seed, storage. When Prefect's record is gone but a verified cache of
that key is on disk, it is reused (``cache_hit``); ``--force-stage logit-cache`` rebuilds it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from components.config import PipelineConfig
from components.devices import resolve_device
from components.logit_cache import (
    CacheError,
    build_logit_cache,
    pipeline_cache_spec,
)
from components.methods import cache_readings
from flows.refs import CacheRef, DataRef, ModelRef
from flows.stage import Outcome, Record, Stage, StageContext


class LogitCacheStage(Stage[CacheRef]):
    name = "logit-cache"
    splits = ("train",)
    output = CacheRef
    # The view policy is the student's: the cache holds the views the students train on.
    reads = (
        "student.train.augment",
        "cache.views",
        "cache.storage",
        "cache.top_k",
        "cache.dtype",
        "cache.runtime",  # ONNX Runtime's logits differ from PyTorch's in the last bits
        "seed",
        "device",
    )
    # Any chunking, forward batch and number of worker processes give the same bytes (tested).
    # The method is read only for the readings a top-k cache holds: environment() puts those,
    # not the method's settings, into the fingerprint (a sweep over methods shares a cache).
    settings = ("cache.chunk_rows", "cache.batch_size", "distributed", "distill")

    def environment(self, config: PipelineConfig) -> dict[str, Any]:
        return {"readings": cache_readings(config)}

    needs = ("prepare-data", "teacher")

    def run(self, ctx: StageContext) -> Outcome[CacheRef]:
        config = ctx.config
        data = ctx.input("prepare-data", DataRef)
        teacher = ctx.input("teacher", ModelRef)
        dataset = data.load(ctx.work_dir)
        spec = pipeline_cache_spec(
            config,
            teacher.sha256,
            data.fingerprint,
            teacher_input=teacher.input_spec,
            class_index=teacher.class_index,
            teacher_format=teacher.format,
        )
        problem = teacher.verify(ctx.work_dir)  # the model file, and any data beside it
        if problem is not None:
            raise CacheError(f"the teacher cannot be used: {problem}")
        # ONNX Runtime runs on the CPU here; PyTorch teachers on the configured device.
        device = resolve_device(config.device) if spec.runtime == "pytorch" else torch.device("cpu")
        started = time.perf_counter()
        info = build_logit_cache(
            teacher.view(ctx.work_dir, dataset.info),
            spec,
            dataset,
            ctx.root,
            config.cache.chunk_rows,
            device,
            rebuild=ctx.forced,
            workers=config.distributed.nproc,
            batch_size=config.cache.batch_size,
        )
        seconds = time.perf_counter() - started
        directory = Path(info.path)
        metrics = {
            "rows": info.rows,
            "views": info.views,
            "bytes_per_sample_view": info.bytes_per_sample_view,
            "cache_bytes": sum(p.stat().st_size for p in directory.glob("*.npy")),
            "seconds": seconds,
            "build_seconds": info.build_seconds,
        }
        if info.cache_hit:
            # The build's own time, recorded in the manifest, minus what verifying took now.
            metrics["time_saved_seconds"] = max(0.0, info.build_seconds - seconds)
            metrics["build_sample_views_per_s"] = (
                info.rows * info.views / max(info.build_seconds, 1e-9)
            )
        else:
            # The teacher ran on these rows; the others were copied, by content, from the
            # caches of earlier data versions (grown data).
            metrics["teacher_rows_computed"] = info.computed_rows
            if info.computed_rows:
                metrics["build_sample_views_per_s"] = (
                    info.computed_rows * info.views / max(info.build_seconds, 1e-9)
                )
        hit = str(info.cache_hit).lower()
        ctx.log.info(
            "logit cache %s: %s (%d rows x %d views, %s, %d bytes per sample-view)",
            info.key,
            "reused (cache hit)"
            if info.cache_hit
            else f"built, the teacher on {info.computed_rows} of the rows",
            info.rows,
            info.views,
            info.storage,
            info.bytes_per_sample_view,
        )
        record = Record(
            params={
                "cache.key": info.key,
                "teacher.sha256": teacher.sha256,
                "view_seed": spec.view_seed,
                "runtime": spec.runtime,
            },
            metrics=metrics,
            tags={"cache_key": info.key, "cache_hit": hit, "reused": hit},
            files=[(directory / "manifest.json", None)],
        )
        ref = CacheRef(info=replace(info, path=ctx.relative(directory)))
        return Outcome(ref, record)
