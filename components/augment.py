"""Batch augmentation on uint8 images: random crop with zero padding, optional h-flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.config import AugmentConfig


def augment_batch(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Shift each image by up to ``crop_padding`` pixels (and flip it half the time).

    Offsets are drawn from ``generator`` on the CPU, so a seeded generator replays the
    same views whatever device the images are on.
    """
    if not config.enabled:
        return images
    n, _, height, width = images.shape
    pad = config.crop_padding
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        images = padded[batch, channel, rows, cols]
    if config.horizontal_flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images
