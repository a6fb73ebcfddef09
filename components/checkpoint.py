"""Checkpoints as plain dicts: weights, architecture, config and metrics; loaded weights-only."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.io import sha256_file, write_bytes
from components.models import build_model


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or not one of ours; the message names the file."""


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    arch: str,
    in_channels: int,
    num_classes: int,
    image_size: int = 32,
    native: bool = False,
    class_names: list[str] | None = None,
    config: dict[str, Any],
    metrics: dict[str, float],
    dataset_fingerprint: str,
) -> str:
    """Write the checkpoint atomically and return the sha256 of the file."""
    checkpoint = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": arch,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "image_size": image_size,
        "native": native,  # a torchvision architecture as torchvision builds it
        "class_names": class_names,  # in output order, when known
        "config": config,
        "metrics": metrics,
        "dataset_fingerprint": dataset_fingerprint,
    }
    save_tensors(path, checkpoint)
    return sha256_file(path)


def save_tensors(path: Path, payload: dict[str, Any]) -> None:
    """torch.save into memory, then one atomic write: a full disk surfaces as OSError(ENOSPC)
    rather than as an error deep inside PyTorch's zip writer."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: Path, device: torch.device | str = "cpu", expected_sha256: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model in eval mode; refuse a file whose hash differs from the expected one."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: does not exist")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise CheckpointError(f"checkpoint {path}: sha256 differs from the recorded one (corrupt)")
    try:
        # weights_only: a checkpoint is data, never code to unpickle.
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        model = build_model(
            checkpoint["arch"],
            checkpoint["in_channels"],
            checkpoint["num_classes"],
            checkpoint.get("image_size", 32),
            checkpoint.get("native", False),
        )
        model.load_state_dict(checkpoint["model"])
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: cannot be loaded ({err})") from err
    return model.to(device).eval(), checkpoint
