"""The usual online loop's teacher, to measure the logit cache against (benchmarks/): a
forward pass of the teacher on every batch's views, answering what the cache answers."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from components.augment import render_strong_views, render_views
from components.config import AugmentConfig
from components.data import Dataset
from components.logit_cache import LogitCache


class OnlineTeacher:
    """The usual online loop's teacher, to measure the cache against: a forward pass of the
    teacher on every batch's views. It answers what ``LogitCache.logits`` answers (the same
    rows at the same replayed views), so the identical training loop runs with either."""

    def __init__(self, view: nn.Module, dataset: Dataset, cache: LogitCache) -> None:
        self.view, self.dataset = view.eval(), dataset
        self.manifest, self.rows, self.directory = cache.manifest, cache.rows, "online teacher"
        spec = cache.manifest["spec"]
        self.seed, self.policy = spec["view_seed"], AugmentConfig(**spec["augment"])

    @torch.no_grad()
    def logits(self, rows: np.ndarray, views: np.ndarray, strong: bool = False) -> torch.Tensor:
        train, ids = self.dataset.splits["train"], self.dataset.train_ids()

        def fetch(r: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(self.dataset.images[train[r]]))

        if strong:
            return self.view(render_strong_views(fetch, rows, ids, views, self.policy, self.seed))
        rendered = render_views(fetch, rows, ids, views, self.policy, self.seed)
        return self.view(rendered.images)

    def batch_logits(
        self,
        rows: np.ndarray,
        views: np.ndarray,
        device: torch.device | None = None,
        strong: bool = False,
        rendered: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What ``LogitCache.batch_logits`` answers (full logits), computed now: on ``rendered``,
        the batch the training loop already rendered, as the usual online loop does (or
        rendered here when not given)."""
        if rendered is None:
            return self.logits(rows, views, strong).to(device or torch.device("cpu"))
        with torch.no_grad():
            return self.view(rendered).to(device or torch.device("cpu"))
