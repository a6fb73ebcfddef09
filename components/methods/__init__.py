"""Distillation methods: one module each, behind one small type.

A method (``distill.kind``) is a config class in components/config.py (pure data: its
fields, its ``kind`` and ``implementation``, the module that carries it) and that module,
here, whose ``IMPLEMENTATION`` is a ``Method`` of three parts:
- ``loss_function``: the scalar to minimise and its parts, from the student's logits, the teacher's
  cached logits (or a top-k cache's readings of them) and the labels; with ``strong``, the
  student's and the teacher's logits on the strong view of the same samples;
- ``reads``: every (temperature, z-scored) at which the loss reads the teacher: what a
  top-k cache must hold to rebuild the teacher's distribution exactly for it;
- ``two_views``: whether it reads a weak and a strong view of every sample.

Nothing else in the tree matches on the kind: training, the logit cache and the pre-flight
check ask ``method_of``. Adding a method is its module, its config class in the
``DistillConfig`` union and its test (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from components.config import PipelineConfig, Variant
from components.losses import LossOutput, Reading, TeacherLogits
from components.variants import implementation

# What a method's loss function is called with: the config, the student's logits, the
# teacher's (cached, or a top-k cache's readings of them), the targets, the epochs done
# (fractional, for warm-ups), the label smoothing, and the strong view's (student, teacher)
# logits for a two-view method (None otherwise).
LossFunction = Callable[
    [Any, torch.Tensor, TeacherLogits, torch.Tensor, float, float, Any], LossOutput
]


@dataclass(frozen=True)
class Method:
    """A method module's ``IMPLEMENTATION``."""

    two_views: bool
    loss_function: LossFunction
    reads: Callable[[Any], tuple[Reading, ...]]

    def loss(
        self,
        config: Any,
        student: torch.Tensor,
        teacher: TeacherLogits,
        targets: torch.Tensor,
        *,
        progress: float,
        label_smoothing: float,
        strong: tuple[torch.Tensor, TeacherLogits] | None,
    ) -> LossOutput:
        return self.loss_function(
            config, student, teacher, targets, progress, label_smoothing, strong
        )

    def readings(self, config: Any) -> tuple[Reading, ...]:
        return self.reads(config)


def method_of(config: Variant) -> Method:
    """The behaviour of a ``distill`` config."""
    method: Method = implementation(config, Method)
    return method


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: TeacherLogits,
    targets: torch.Tensor,
    config: Variant,
    progress_epochs: float,
    label_smoothing: float = 0.0,
    strong: tuple[torch.Tensor, TeacherLogits] | None = None,
) -> LossOutput:
    """The configured method's loss (``distill``)."""
    return method_of(config).loss(
        config,
        student_logits,
        teacher_logits,
        targets,
        progress=progress_epochs,
        label_smoothing=label_smoothing,
        strong=strong,
    )


def cache_readings(config: PipelineConfig) -> list[Reading] | None:
    """Top-k storage: every reading the configured method makes of the teacher, which the
    cache must hold to rebuild it exactly; None for full storage (it reads exactly
    anywhere, so the method does not change the cache)."""
    if config.cache.storage != "topk":
        return None
    return sorted(set(method_of(config.distill).readings(config.distill)))


def check_views(config: PipelineConfig) -> None:
    """A two-view method needs strong views, and strong views need a two-view method:
    ``ValueError`` naming the keys to set."""
    kind = config.distill.kind
    two_view = method_of(config.distill).two_views
    augment = config.student.train.augment
    strong = augment.strong is not None
    if two_view and not (strong and augment.enabled):
        raise ValueError(
            f"distill.kind={kind} reads a weak and a strong view of every sample: set "
            "student.train.augment.enabled=true and student.train.augment.strong (e.g. "
            "--set student.train.augment.strong={})"
        )
    if strong and not two_view:
        raise ValueError(
            "student.train.augment.strong: strong views are read by two-view methods only "
            f"(such as distill.kind=mlkd), not by distill.kind={kind}"
        )
