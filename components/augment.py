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

from components.config import AugmentConfig, StrongAugment

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
    train_ids: np.ndarray,
    view_ids: np.ndarray | int,
    config: AugmentConfig,
    seed: int,
) -> Views:
    """The views of training-split ``rows``; ``fetch(rows)`` returns their uint8 images.
    ``train_ids``: every training row's identity (``Dataset.train_ids``), which seeds its
    views: its content id, so a view stays the same wherever the image lies in a grown set.

    With mixup, a view is lambda * view(sample) + (1 - lambda) * view(partner), the same view
    number of both; the partner and lambda are replayed from (seed, sample, view) like the
    crop, so the cache and the student render the identical mixed image
    ("function matching", Beyer et al. 2022).
    """
    sample_ids = train_ids[rows]
    images = augment(fetch(rows), config, seed, sample_ids, view_ids)
    if not config.enabled or config.mixup_alpha <= 0:
        return Views(images)
    h = _splitmix(view_hash(seed ^ 0x313C5, sample_ids, view_ids))
    # The partner is a row of this training set: a mixed view is not the same input in a
    # grown set (the cache reuses no mixed views, logit_cache.py).
    partner_rows = (h % np.uint64(len(train_ids))).astype(np.int64)
    weight = np.array(
        [np.random.default_rng(int(x)).beta(config.mixup_alpha, config.mixup_alpha) for x in h],
        dtype=np.float32,
    )
    partners = augment(fetch(partner_rows), config, seed, train_ids[partner_rows], view_ids)
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


# --- strong views ---------------------------------------------------------------------------
# A RandAugment-style policy (Cubuk et al. 2020) with TrivialAugment's uniformly drawn
# strength (Mueller and Hutter 2021), laid over a weak view and replayed like it: the
# operations, strengths, signs and cutout centres of view v of sample s are hashes of
# (seed, s, v), so the cache and the student render the same strong image.
STRONG_OPS = (
    "identity",
    "rotate",  # up to 30 degrees
    "shear_x",  # up to 0.3
    "shear_y",
    "translate_x",  # up to 30% of the side
    "translate_y",
    "contrast",  # factor 1 +- 0.9 m
    "brightness",
    "solarize",  # invert pixels above 256 (1 - m)
    "posterize",  # keep 8 - round(4 m) bits
    "autocontrast",
    "cutout",  # a zeroed square of side up to half the image
)
_STRONG_SALT = 0x57A0_96


@dataclass(frozen=True)
class StrongParams:
    ops: np.ndarray  # (N, slots) index into STRONG_OPS
    strength: np.ndarray  # (N, slots) in [0, magnitude]
    sign: np.ndarray  # (N, slots) +1 or -1
    centre: np.ndarray  # (N, slots, 2) in [0, 1): the cutout's centre (row, column)


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 hashes -> floats uniform in [0, 1) (the top 53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def strong_params(
    config: StrongAugment, seed: int, sample_ids: np.ndarray, view_ids: np.ndarray | int
) -> StrongParams:
    h = view_hash(seed ^ _STRONG_SALT, sample_ids, view_ids)
    ops, strength, sign, centre = [], [], [], []
    for _ in range(config.ops):
        h = _splitmix(h)
        ops.append((h % np.uint64(len(STRONG_OPS))).astype(np.int64))
        h = _splitmix(h)
        strength.append(_unit(h) * config.magnitude)
        h = _splitmix(h)
        sign.append(np.where(h & np.uint64(1), 1.0, -1.0))
        h = _splitmix(h)
        row = _unit(h)
        h = _splitmix(h)
        centre.append(np.stack([row, _unit(h)], axis=-1))
    return StrongParams(
        ops=np.stack(ops, axis=1),
        strength=np.stack(strength, axis=1),
        sign=np.stack(sign, axis=1),
        centre=np.stack(centre, axis=1),
    )


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (n, C, H, W) through per-image 2x3 affine maps (output -> input), zeros
    outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _strong_op(
    name: str, x: torch.Tensor, m: torch.Tensor, sign: torch.Tensor, centre: torch.Tensor
) -> torch.Tensor:
    """One operation on float images in [0, 255], strength ``m`` (n,) in [0, 1]."""
    n = len(x)
    per_image = (n, 1, 1, 1)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    signed = sign * m
    match name:
        case "rotate":
            angle = torch.deg2rad(30.0 * signed)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
            return _affine(x, theta)
        case "shear_x":
            theta[:, 0, 1] = 0.3 * signed
            return _affine(x, theta)
        case "shear_y":
            theta[:, 1, 0] = 0.3 * signed
            return _affine(x, theta)
        case "translate_x":
            theta[:, 0, 2] = 0.6 * signed  # normalised coordinates span 2
            return _affine(x, theta)
        case "translate_y":
            theta[:, 1, 2] = 0.6 * signed
            return _affine(x, theta)
        case "contrast":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            return mean + (x - mean) * (1 + 0.9 * signed).view(per_image)
        case "brightness":
            return x * (1 + 0.9 * signed).view(per_image)
        case "solarize":
            threshold = (256.0 * (1 - m)).view(per_image)
            return torch.where(x >= threshold, 255.0 - x, x)
        case "posterize":
            step = torch.pow(2.0, torch.round(4.0 * m)).view(per_image)
            return torch.floor(x / step) * step
        case "autocontrast":
            low = x.amin(dim=(2, 3), keepdim=True)
            high = x.amax(dim=(2, 3), keepdim=True)
            span = (high - low).clamp_min(1.0)
            return torch.where(high > low, (x - low) * 255.0 / span, x)
        case "cutout":
            height, width = x.shape[2:]
            side = torch.round(0.5 * m * min(height, width))
            top = torch.floor(centre[:, 0] * height) - torch.floor(side / 2)
            left = torch.floor(centre[:, 1] * width) - torch.floor(side / 2)
            rows = torch.arange(height, dtype=x.dtype)[None, :, None]
            cols = torch.arange(width, dtype=x.dtype)[None, None, :]
            inside = (
                (rows >= top[:, None, None])
                & (rows < (top + side)[:, None, None])
                & (cols >= left[:, None, None])
                & (cols < (left + side)[:, None, None])
            )
            return x.masked_fill(inside[:, None], 0.0)
        case _:
            raise ValueError(f"unknown strong augmentation {name!r}")


def apply_strong(images: torch.Tensor, params: StrongParams) -> torch.Tensor:
    """The strong views of uint8 (N, C, H, W) images: each slot's operation applied to the
    images that drew it, rounded back to uint8 after every operation (like PIL)."""
    device = images.device
    x = images.float().cpu()  # the same arithmetic whatever device renders
    for slot in range(params.ops.shape[1]):
        for index, name in enumerate(STRONG_OPS):
            chosen = np.flatnonzero(params.ops[:, slot] == index)
            if name == "identity" or len(chosen) == 0:
                continue
            pick = torch.as_tensor(chosen)
            m = torch.as_tensor(params.strength[chosen, slot], dtype=x.dtype)
            sign = torch.as_tensor(params.sign[chosen, slot], dtype=x.dtype)
            centre = torch.as_tensor(params.centre[chosen, slot], dtype=x.dtype)
            x[pick] = _strong_op(name, x[pick], m, sign, centre).round().clamp(0, 255)
    return x.to(torch.uint8).to(device)


def render_strong_views(
    fetch: Callable[[np.ndarray], torch.Tensor],
    rows: np.ndarray,
    train_ids: np.ndarray,
    view_ids: np.ndarray | int,
    config: AugmentConfig,
    seed: int,
) -> torch.Tensor:
    """The strong views (uint8) of training-split ``rows``: the strong policy laid over the
    weak view of the same number."""
    if config.strong is None:
        raise ValueError("no strong augmentation configured (augment.strong)")
    sample_ids = train_ids[rows]
    weak = augment(fetch(rows), config, seed, sample_ids, view_ids)
    return apply_strong(weak, strong_params(config.strong, seed, sample_ids, view_ids))
