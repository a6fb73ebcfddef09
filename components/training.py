"""One training loop for teacher, baseline student and distilled student.

The loop reads down like nanoGPT's: schedule, batches, views, loss, step, evaluate, report.
What differs between the uses is the recipe (components/recipes.py: the training config,
the seeds, the views) and the loss: labels only (``targets``: class indices, or class
probabilities for mixed views), or labels plus the teacher's cached logits for the same
views (``teacher_cache``), looked up by the sample's row in the training split and its view
number (never by batch position, so shuffling cannot misalign them).

Views: with ``view_pool=None`` (the teacher, a control on fresh views) each epoch draws a
fresh view of every sample; with ``view_pool=K`` (the distilled student, a control on cached
views) each epoch picks one of the K views the cache holds, and the student sees exactly the
input the teacher saw for it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, assert_never, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from components.augment import choose_views, render_strong_views, render_views, view_targets
from components.checkpoint import save_tensors
from components.config import DistillConfig, TrainConfig
from components.cores import apply_fair_threads
from components.data import Dataset, normalize
from components.devices import place, show_progress
from components.inference import predict_logits
from components.losses import LossOutput, label_loss
from components.methods import distillation_loss

if TYPE_CHECKING:
    from components.logit_cache import LogitCache

EpochCallback = Callable[[int, dict[str, float]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    resumed_from_epoch: int = 0  # the last epoch restored from a training state, if any


def _global_rng() -> dict[str, Any]:
    """Python's, NumPy's and PyTorch's global generators, as plain types and tensors."""
    kind, keys, pos, has_gauss, gauss = cast(tuple[Any, ...], np.random.get_state())
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }


def _set_global_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    save_tensors(path, state)


def load_training_state(path: Path) -> dict[str, Any]:
    """weights_only: the state is data, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"training state {path}: unreadable or corrupt ({err})") from err


def evaluate(
    model: nn.Module, dataset: Dataset, split: str, device: torch.device
) -> dict[str, float]:
    images, labels = dataset.split(split)
    logits = predict_logits(model, images, dataset, device)
    targets = torch.as_tensor(labels)
    return {
        f"{split}_loss": F.cross_entropy(logits, targets).item(),
        f"{split}_accuracy": (logits.argmax(1) == targets).float().mean().item(),
    }


def _lr_at(step: int, steps_per_epoch: int, train: TrainConfig) -> float:
    """The learning rate at ``step`` under the configured schedule (see TrainConfig)."""
    peak, total = train.lr, train.epochs * steps_per_epoch
    match train.schedule:
        case "constant":
            return peak
        case "multistep":
            epoch = step // steps_per_epoch  # 0-based: decays from the start of a milestone
            return peak * train.gamma ** sum(epoch >= m for m in train.milestones)
        case "onecycle":
            warm = max(1, int(0.3 * total))
            if step < warm:
                return peak * (0.04 + 0.96 * step / warm)
            progress = (step - warm) / max(1, total - warm)
            return peak * 0.5 * (1 + math.cos(math.pi * progress))
        case _:
            assert_never(train.schedule)


def _optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only, never on biases and norm scales."""
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    decay = [p for p in model.parameters() if p.ndim > 1]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    match train.optimizer:
        case "sgd":
            return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)
        case "adamw":
            return torch.optim.AdamW(groups, lr=train.lr)
        case _:
            assert_never(train.optimizer)


def train_classifier(
    model: nn.Module,
    dataset: Dataset,
    train: TrainConfig,
    *,
    seed: int,
    device: torch.device,
    view_seed: int,
    view_pool: int | None = None,
    teacher_cache: LogitCache | None = None,
    distill: DistillConfig | None = None,
    on_epoch: EpochCallback | None = None,
    desc: str = "train",
    rank: int = 0,
    world: int = 1,
    state_path: Path | None = None,
) -> TrainResult:
    """Train in place; with a ``teacher_cache`` (and ``distill``), distil from it.

    Returns per-epoch train/val metrics and the final val/test metrics. With ``world`` > 1
    (inside a process group, see components.distributed), the model is wrapped in
    DistributedDataParallel and this process trains on rows rank, rank + world, ... of every
    batch: the batches, their order and the views are the same as in one process, and the
    gradients are averaged across processes. (BatchNorm statistics are per process.)

    ``state_path``: after every epoch the whole training state (weights, optimizer, step,
    every random generator, the history so far) is written there atomically; a call that
    finds one resumes after its epoch, and ends exactly where an uninterrupted run would.
    """
    if (teacher_cache is None) != (distill is None):
        raise ValueError("teacher_cache and distill config go together")
    train_indices, train_ids = dataset.splits["train"], dataset.train_ids()
    if teacher_cache is not None:
        _check_cache_matches(teacher_cache, dataset, train, view_seed, view_pool)
    seed_everything(seed)
    images = torch.as_tensor(np.asarray(dataset.images[train_indices]))
    labels = torch.as_tensor(dataset.labels[train_indices])
    order_rng = torch.Generator().manual_seed(seed + 1)

    place(model, device)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = _optimizer(model, train)
    steps_per_epoch = math.ceil(len(images) / train.batch_size)
    result = TrainResult()
    step = 0
    first_epoch = 1
    if state_path is not None and state_path.is_file():
        saved = load_training_state(state_path)
        if saved["epochs"] != train.epochs:
            raise ValueError(f"training state {state_path}: saved for {saved['epochs']} epochs")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        order_rng.set_state(saved["order_rng"])
        _set_global_rng(saved["rng"])
        step, first_epoch = saved["step"], saved["epoch"] + 1
        result.history = saved["history"]
        result.resumed_from_epoch = saved["epoch"]
        if on_epoch is not None:  # the finished epochs, for whoever records them
            for done, metrics in enumerate(result.history, start=1):
                on_epoch(done, metrics)
    for epoch in range(first_epoch, train.epochs + 1):
        apply_fair_threads()  # another kd run may have started, or ended, since the last
        model.train()
        epoch_started = time.perf_counter()
        order = torch.randperm(len(images), generator=order_rng)
        sums = {"loss": 0.0, "correct": 0.0}
        part_sums: dict[str, float] = {}
        batches = tqdm(
            range(steps_per_epoch),
            desc=f"{desc} epoch {epoch}/{train.epochs}",
            disable=rank != 0 or not show_progress(),
            leave=False,
            unit="batch",
        )
        for b in batches:
            rows = order[b * train.batch_size : (b + 1) * train.batch_size].numpy()
            if len(rows) < world:
                continue  # a last batch too small to give every process a row (all skip it)
            rows = rows[rank::world]
            sample_ids = train_ids[rows]
            views = (
                np.full(len(rows), epoch, dtype=np.int64)
                if view_pool is None
                else choose_views(view_seed, sample_ids, epoch, view_pool)
            )
            rendered = render_views(
                lambda r: images[r].to(device), rows, train_ids, views, train.augment, view_seed
            )
            batch = normalize(rendered.images, dataset.info)
            hard = labels[rows].to(device)
            targets = view_targets(rendered, hard, labels, dataset.info.num_classes)
            lr = _lr_at(step, steps_per_epoch, train)
            for group in optimizer.param_groups:
                group["lr"] = lr

            logits = net(batch)
            strong, strong_logits = None, None
            if train.augment.strong is not None:  # two-view training: the same rows again,
                # each at the strong view of the view it was just shown (its own forward, so
                # batch norm sees each view's statistics, as in MLKD's code)
                strong = render_strong_views(
                    lambda r: images[r].to(device),
                    rows,
                    train_ids,
                    views,
                    train.augment,
                    view_seed,
                )
                strong_logits = net(normalize(strong, dataset.info))
            loss: LossOutput
            if teacher_cache is not None and distill is not None:
                soft = teacher_cache.batch_logits(rows, views, device, rendered=rendered.images)
                pair = None
                if strong is not None and strong_logits is not None:
                    strong_teacher = teacher_cache.batch_logits(
                        rows, views, device, strong=True, rendered=strong
                    )
                    pair = (strong_logits, strong_teacher)
                progress = epoch - 1 + b / steps_per_epoch
                loss = distillation_loss(
                    logits, soft, targets, distill, progress, train.label_smoothing, strong=pair
                )
            else:
                loss = label_loss(logits, targets, train.label_smoothing, strong_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
            step += 1

            # .item() syncs with the device; once per batch is cheap at these sizes.
            sums["loss"] += loss.total.item() * len(rows)
            sums["correct"] += (logits.argmax(1) == hard).sum().item()
            for name, value in loss.parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + value.item() * len(rows)
            batches.set_postfix(loss=f"{loss.total.item():.3f}")

        if world > 1:
            sums, part_sums = _sum_over_processes(sums, part_sums, device)
        metrics = {
            "epoch_seconds": time.perf_counter() - epoch_started,  # training only, no eval
            "train_loss": sums["loss"] / len(images),
            "train_accuracy": sums["correct"] / len(images),
            "lr": lr,
            **{f"train_{k}_loss": v / len(images) for k, v in part_sums.items()},
            **evaluate(model, dataset, "val", device),
        }
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if state_path is not None and rank == 0:
            save_training_state(
                state_path,
                {
                    "epoch": epoch,
                    "epochs": train.epochs,
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "order_rng": order_rng.get_state(),
                    "rng": _global_rng(),
                    "history": result.history,
                },
            )
    result.final = {
        **evaluate(model, dataset, "val", device),
        **evaluate(model, dataset, "test", device),
    }
    model.eval()
    return result


def _sum_over_processes(
    sums: dict[str, float], parts: dict[str, float], device: torch.device
) -> tuple[dict[str, float], dict[str, float]]:
    import torch.distributed as dist

    names = [*sums, *sorted(parts)]
    values = torch.tensor([*sums.values(), *(parts[k] for k in sorted(parts))], device=device)
    dist.all_reduce(values)
    total = dict(zip(names, values.tolist(), strict=True))
    return {k: total[k] for k in sums}, {k: total[k] for k in parts}


def _check_cache_matches(
    cache: LogitCache, dataset: Dataset, train: TrainConfig, view_seed: int, view_pool: int | None
) -> None:
    """The student must see exactly the inputs the cached logits were computed on."""
    spec = cache.manifest["spec"]
    problems = []
    if spec["dataset_fingerprint"] != dataset.info.fingerprint or cache.rows != len(
        dataset.splits["train"]
    ):
        problems.append("it was built for another dataset or split")
    if spec["augment"] != train.augment.model_dump(mode="json"):
        problems.append(f"its views use augmentation {spec['augment']}")
    if spec["view_seed"] != view_seed or spec["views"] != view_pool:
        problems.append(f"it holds {spec['views']} views from seed {spec['view_seed']}")
    if problems:
        raise ValueError(
            f"logit cache {cache.directory} does not match this training: " + "; ".join(problems)
        )
