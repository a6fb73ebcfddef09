"""The vocabulary every distillation method shares: what a loss returns, how it reads the
teacher, logit standardisation, and the label-only loss of the control.

The methods themselves are one module each under components/methods/.
``targets`` are class indices (N,) or class probabilities (N, C) (mixup mixes two labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class TeacherReadings(Protocol):
    """The teacher's logits for a batch as stored in a top-k cache: readable exactly at the
    temperatures it was built for (see components/logit_cache.py)."""

    def at(self, temperature: float, standardized: bool = False) -> torch.Tensor:
        """Logits whose softmax at ``temperature`` is the teacher's (z-scored first when
        ``standardized``)."""
        ...


# The teacher's side of a batch: full logits (N, C), or a top-k cache's readings.
TeacherLogits = torch.Tensor | TeacherReadings
# Where a method reads the teacher: (temperature, z-scored).
Reading = tuple[float, bool]


def teacher_at(
    teacher: TeacherLogits, temperature: float, standardized: bool = False
) -> torch.Tensor:
    """The teacher's logits as a loss reads them at ``temperature``. Full logits are the same
    at every temperature (cast up from float16 first); top-k readings are rebuilt for it."""
    if isinstance(teacher, torch.Tensor):
        logits = teacher.float()
        return standardize(logits) if standardized else logits
    return teacher.at(temperature, standardized)


STANDARDIZE_EPS = 1e-7


def standardize(logits: torch.Tensor, eps: float = STANDARDIZE_EPS) -> torch.Tensor:
    """Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation",
    CVPR 2024): z-score each sample's logits, z' = (z - mean(z)) / std(z), so the student
    matches the teacher's logit *relations* rather than their scale.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def label_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    strong_logits: torch.Tensor | None = None,
) -> LossOutput:
    """Cross-entropy on the labels alone: the teacher-free control. With the strong views'
    logits, the sum over both views (the control of a two-view method sees its inputs)."""
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    if strong_logits is not None:
        ce = ce + F.cross_entropy(strong_logits, targets, label_smoothing=label_smoothing)
    return LossOutput(total=ce, parts={"ce": ce.detach()})


def kl_per_sample(
    student: torch.Tensor, teacher: TeacherLogits, temperature: float, standardized: bool
) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T) for each sample (N,), both z-scored first when
    ``standardized``."""
    s = standardize(student) if standardized else student
    t = teacher_at(teacher, temperature, standardized)
    log_s = F.log_softmax(s / temperature, dim=1)
    log_t = F.log_softmax(t / temperature, dim=1)
    return temperature**2 * (log_t.exp() * (log_t - log_s)).sum(1)
