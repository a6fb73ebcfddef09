"""What the teacher-source tests share: a tiny trained-looking classifier on 1x28x28 images and
a model registry that hands out files (the flows tests read real MLflow ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from components.models import build_model
from components.teachers import InputSpec

SPEC = InputSpec(1, (28, 28), (0.5,), (0.25,))


@pytest.fixture
def classifier() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn_tiny", 1, 10).eval()


class FileRegistry:
    """A model registry of models held in memory: what ``ModelStore`` promises, no more."""

    def __init__(self, models: dict[str, tuple[str, Any]]) -> None:
        self.models = models

    def resolve_model(self, uri: str) -> tuple[str, str]:
        if uri not in self.models:
            raise ValueError(f"{uri}: no such model")
        return uri, f"{uri} (version 1)"

    def fetch_model(self, uri: str, destination: Path) -> tuple[str, Any]:
        self.resolve_model(uri)
        return self.models[uri]
