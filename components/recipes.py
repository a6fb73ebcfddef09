"""How the pipeline trains its models: one recipe for the teacher, one for the two students.

A recipe fixes everything that decides the weights: architecture, training config, seed and
the view rule. The teacher sees a fresh augmented view of every sample each epoch, drawn
from its own random stream; the distilled student picks, each epoch, one of the K views the
logit cache holds. The label-only control has the student's architecture, budget and seed;
its views (the same cached ones, or fresh ones) and label smoothing are its recipe
(``student.baseline``, chosen on held-out folds). The pipeline's stages and every script in
``benchmarks/`` train through ``fit``: there is one recipe, not a copy per caller.

``fit`` also runs a recipe in several processes (``nproc`` > 1): launched the torchrun way,
DistributedDataParallel, rank 0 reporting epochs and returning the weights.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from components.augment import stream_seed
from components.config import DistillConfig, PipelineConfig, TrainConfig
from components.data import Dataset, load_dataset
from components.distributed import (
    join_process_group,
    launch,
    leave_process_group,
    rank_and_world,
    worker_device,
)
from components.logit_cache import LogitCache, open_logit_cache
from components.models import build_model
from components.training import EpochCallback, TrainResult, seed_everything, train_classifier


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a trained model's weights, given the data."""

    arch: str  # ArchName or torchvision:<name>
    train: TrainConfig
    seed: int
    view_seed: int  # seeds the replayed augmentation (see components/augment.py)
    view_pool: int | None  # None: a fresh view every epoch; K: one of the K cached views
    distill: DistillConfig | None = None  # None: labels only


def teacher_recipe(config: PipelineConfig) -> Recipe:
    """The teacher: a fresh view every epoch, from a stream apart from the students'."""
    return Recipe(
        arch=config.teacher.model.name,
        train=config.teacher.train,
        seed=config.seed,
        view_seed=stream_seed(config.seed, "teacher-views"),
        view_pool=None,
    )


def student_recipe(config: PipelineConfig, distilled: bool) -> Recipe:
    """The distilled student (or, ``distilled=False``, the same student on labels only): the
    student's budget and seed, one of the K cached views each epoch."""
    return Recipe(
        arch=config.student.model.name,
        train=config.student.train,
        seed=config.seed,
        view_seed=config.seed,
        view_pool=config.cache.views,
        distill=config.distill if distilled else None,
    )


def control_name(views: str, label_smoothing: float) -> str:
    """``cached-ls0.1``: how a control recipe is named in runs, reports and benchmarks."""
    return f"{views}-ls{label_smoothing:g}"


# The control recipes ``kd choose-control`` and benchmarks/distill_quality.py choose among:
# name -> (views, label smoothing).
CONTROL_CANDIDATES: dict[str, tuple[Literal["cached", "fresh"], float]] = {
    control_name(views, smoothing): (views, smoothing)
    for views in ("cached", "fresh")
    for smoothing in (0.0, 0.1)
}


def baseline_recipe(config: PipelineConfig) -> Recipe:
    """The pipeline's control: ``student.baseline``'s one recipe."""
    baseline = config.student.baseline
    return control_recipe(config, baseline.views, baseline.label_smoothing)


def control_recipe(
    config: PipelineConfig, views: Literal["cached", "fresh"], label_smoothing: float
) -> Recipe:
    """The label-only student with the student's budget and seed: its views either the K
    cached ones the distilled student sees (``cached``) or a fresh one every epoch
    (``fresh``), at the given label smoothing."""
    base = student_recipe(config, distilled=False)
    train = base.train.model_copy(update={"label_smoothing": label_smoothing})
    return replace(base, train=train, view_pool=base.view_pool if views == "cached" else None)


def fit(
    recipe: Recipe,
    dataset: Dataset,
    device: torch.device,
    *,
    teacher_logits: Any | None = None,
    nproc: int = 1,
    on_epoch: EpochCallback | None = None,
    state_path: Path | None = None,
    desc: str = "train",
) -> tuple[nn.Module, TrainResult]:
    """Build the recipe's model from its seed and train it; returns the model (eval mode) and
    its per-epoch and final metrics.

    ``teacher_logits``: for a distilled recipe, where the teacher's logits come from: a
    ``LogitCache`` (or any object answering ``batch_logits`` like it, in one process).
    ``nproc`` > 1 launches that many processes; ``on_epoch`` must then be picklable (rank 0
    calls it). ``state_path``: the per-epoch training state a killed run resumes from.
    """
    if (teacher_logits is None) != (recipe.distill is None):
        raise ValueError("a distilled recipe needs the teacher's logits, a label-only one none")
    seed_everything(recipe.seed)
    info = dataset.info
    model = build_model(recipe.arch, info.in_channels, info.num_classes, min(info.image_size))
    if nproc == 1:
        result = _train(recipe, model, dataset, device, teacher_logits, on_epoch, state_path, desc)
        return model.eval(), result
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        # NCCL needs a GPU of its own for every process.
        raise ValueError(
            f"distributed.nproc={nproc} needs {nproc} GPUs for training on cuda; "
            f"this machine has {torch.cuda.device_count()}"
        )
    if teacher_logits is not None and not isinstance(teacher_logits, LogitCache):
        raise ValueError("training in several processes reads the teacher from a logit cache")
    cache = (
        (str(teacher_logits.directory), teacher_logits.manifest["key"])
        if teacher_logits is not None
        else None
    )
    report = pickle.dumps(on_epoch) if on_epoch is not None else None
    job = _Job(recipe, dataset.info.path, cache, device.type, report, state_path, desc)
    state, result = launch(_fit_share, nproc, job, model)[0]
    model.load_state_dict(state)
    return model.eval(), result


def _train(
    recipe: Recipe,
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    teacher_logits: Any | None,
    on_epoch: EpochCallback | None,
    state_path: Path | None,
    desc: str,
    rank: int = 0,
    world: int = 1,
) -> TrainResult:
    """The recipe's training of ``model``, in this process (its share, with ``world`` > 1)."""
    return train_classifier(
        model,
        dataset,
        recipe.train,
        seed=recipe.seed,
        device=device,
        view_seed=recipe.view_seed,
        view_pool=recipe.view_pool,
        teacher_cache=teacher_logits,
        distill=recipe.distill,
        on_epoch=on_epoch,
        desc=desc,
        rank=rank,
        world=world,
        state_path=state_path,
    )


@dataclass(frozen=True)
class _Job:
    """A launched process's inputs: picklable, the dataset and cache reopened by path."""

    recipe: Recipe
    dataset_path: str
    cache: tuple[str, str] | None  # (directory, key) of the logit cache
    device_type: str
    # Pickled apart, for rank 0 alone to load: only rank 0 reports, and loading the reporter
    # imports what it reports with (MLflow, a second of start-up in every other process).
    on_epoch: bytes | None
    state_path: Path | None
    desc: str


def _fit_share(job: _Job, model: nn.Module) -> tuple[dict[str, torch.Tensor], TrainResult] | None:
    """One launched process's share of the training; rank 0 returns the weights and metrics."""
    rank, world = rank_and_world()
    device = worker_device(job.device_type)
    join_process_group(device)
    if rank == 0:  # a fresh process: its log lines go to the launching console
        logging.basicConfig(level=logging.INFO, format="%(asctime)s | rank 0 | %(message)s")
    teacher_logits = (
        open_logit_cache(Path(job.cache[0]), expected_key=job.cache[1])
        if job.cache is not None
        else None
    )
    try:
        on_epoch = pickle.loads(job.on_epoch) if rank == 0 and job.on_epoch else None
        result = _train(
            job.recipe,
            model,
            load_dataset(job.dataset_path),
            device,
            teacher_logits,
            on_epoch,
            job.state_path,
            job.desc,
            rank,
            world,
        )
    finally:
        leave_process_group()
    if rank != 0:
        return None
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, result
