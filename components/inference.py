"""A model's logits on a dataset's images, as every evaluation reads them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from components.data import Dataset, normalize


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 512,
) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images, in eval mode."""
    model.to(memory_format=torch.channels_last).eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = normalize(np.asarray(images[start : start + batch_size]), dataset.info)
        outputs.append(model(batch.to(device)).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, dataset.info.num_classes)
