"""Replayable augmentation: every view is a pure function of (seed, sample index, view number).

A view's parameters (crop offsets, flip) come from a counter-based hash (SplitMix64) of its
three coordinates rather than from a stateful generator, so any view of any sample can be
regenerated exactly, in any order, on any device, in another process. That is what lets the
logit cache hold the teacher's output for the exact input the student will see
(FKD, Shen & Xing 2022; "consistent teaching", Beyer et al. 2022).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from components.config import AugmentConfig

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + _GOLDEN).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def stream_seed(seed: int, stream: str) -> int:
    """A seed for one named random stream (e.g. the teacher's views), apart from the others."""
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).hexdigest()
    return int(digest[:12], 16)


def view_hash(seed: int, sample_ids: np.ndarray, view_ids: np.ndarray | int) -> np.ndarray:
    """One uint64 per (seed, sample, view): independent streams for every coordinate."""
    samples = np.asarray(sample_ids, dtype=np.uint64)
    views = np.broadcast_to(np.asarray(view_ids, dtype=np.uint64), samples.shape)
    base = _splitmix(np.full(samples.shape, seed % 2**64, dtype=np.uint64))
    return _splitmix(_splitmix(base ^ samples) ^ views)


@dataclass(frozen=True)
class ViewParams:
    dy: np.ndarray  # row offset into the padded image, 0 .. 2 * padding
    dx: np.ndarray
    flip: np.ndarray  # bool


def view_params(
    config: AugmentConfig, seed: int, sample_ids: np.ndarray, view_ids: np.ndarray | int
) -> ViewParams:
    h = view_hash(seed, sample_ids, view_ids)
    span = np.uint64(2 * config.crop_padding + 1)
    h_dx = _splitmix(h)
    h_flip = _splitmix(h_dx)
    flip = (h_flip & np.uint64(1)).astype(bool) & config.horizontal_flip
    return ViewParams(dy=(h % span).astype(np.int64), dx=(h_dx % span).astype(np.int64), flip=flip)


def apply_views(images: torch.Tensor, params: ViewParams, padding: int) -> torch.Tensor:
    """Crop each (N, C, H, W) image at its offsets from the zero-padded image; flip some."""
    n, channels, height, width = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.as_tensor(params.dy, device=device)
        dx = torch.as_tensor(params.dx, device=device)
        rows = (dy[:, None] + torch.arange(height, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(channels, device=device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if params.flip.any():
        flip = torch.as_tensor(params.flip, device=device)[:, None, None, None]
        images = torch.where(flip, images.flip(-1), images)
    return images


def augment(
    images: torch.Tensor,
    config: AugmentConfig,
    seed: int,
    sample_ids: np.ndarray,
    view_ids: np.ndarray | int,
) -> torch.Tensor:
    """The given views of the given samples (identity when augmentation is off)."""
    if not config.enabled:
        return images
    params = view_params(config, seed, sample_ids, view_ids)
    return apply_views(images, params, config.crop_padding)


def choose_views(seed: int, sample_ids: np.ndarray, epoch: int, views: int) -> np.ndarray:
    """Which of the ``views`` cached views each sample uses in ``epoch``: fixed by the seed."""
    if views == 1:
        return np.zeros(len(sample_ids), dtype=np.int64)
    h = view_hash(seed ^ 0x5EED, sample_ids, epoch)
    return (h % np.uint64(views)).astype(np.int64)


@dataclass(frozen=True)
class Views:
    """A batch of rendered views: uint8 images, or float32 in [0, 255] when mixed."""

    images: torch.Tensor
    partner_rows: np.ndarray | None = None  # mixup partner (a training-split row) per sample
    weight: np.ndarray | None = None  # mixup weight of the sample itself, ~ Beta(a, a)


def render_views(
    fetch: Callable[[np.ndarray], torch.Tensor],
    rows: np.ndarray,
    train_indices: np.ndarray,
    view_ids: np.ndarray | int,
    config: AugmentConfig,
    seed: int,
) -> Views:
    """The views of training-split ``rows``; ``fetch(rows)`` returns their uint8 images.

    With mixup, a view is lambda * view(sample) + (1 - lambda) * view(partner), the same view
    number of both; the partner and lambda are replayed from (seed, sample, view) like the
    crop, so the cache and the student render the identical mixed image
    ("function matching", Beyer et al. 2022).
    """
    sample_ids = train_indices[rows]
    images = augment(fetch(rows), config, seed, sample_ids, view_ids)
    if not config.enabled or config.mixup_alpha <= 0:
        return Views(images)
    h = _splitmix(view_hash(seed ^ 0x313C5, sample_ids, view_ids))
    partner_rows = (h % np.uint64(len(train_indices))).astype(np.int64)
    weight = np.array(
        [np.random.default_rng(int(x)).beta(config.mixup_alpha, config.mixup_alpha) for x in h],
        dtype=np.float32,
    )
    partners = augment(fetch(partner_rows), config, seed, train_indices[partner_rows], view_ids)
    w = torch.as_tensor(weight, device=images.device)[:, None, None, None]
    mixed = w * images.float() + (1 - w) * partners.float()
    return Views(mixed, partner_rows, weight)


def view_targets(
    views: Views, labels: torch.Tensor, train_labels: torch.Tensor, classes: int
) -> torch.Tensor:
    """Class indices, or mixed class probabilities for mixed views."""
    if views.partner_rows is None or views.weight is None:
        return labels
    w = torch.as_tensor(views.weight, device=labels.device)[:, None]
    partner = train_labels[views.partner_rows].to(labels.device)
    return w * F.one_hot(labels, classes).float() + (1 - w) * F.one_hot(partner, classes).float()
