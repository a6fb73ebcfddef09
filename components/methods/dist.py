"""``distill.kind: dist``: distillation by correlation, from a stronger teacher (DIST)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.config import DISTDistill
from components.losses import LossOutput, TeacherLogits, teacher_at
from components.methods import Method


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: TeacherLogits,
    targets: torch.Tensor,
    config: DISTDistill,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DIST (Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022). With P = softmax(z / T), a (batch, classes) matrix for each model, and
    rho the Pearson correlation:

        inter = 1 - mean over samples i of rho(P_s[i, :], P_t[i, :])    (each sample's classes)
        intra = 1 - mean over classes c of rho(P_s[:, c], P_t[:, c])    (each class's samples)
        L = ce_weight * CE(z_s, y) + T^2 * (beta * inter + gamma * intra)

    Correlation, not KL: the student matches the teacher's preferences up to shift and scale,
    which the authors find matters when the teacher is much stronger. The intra-class term
    reads the batch, so it depends on the batch's composition.
    """
    temperature = config.temperature
    teacher = teacher_at(teacher_logits, temperature)
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher / temperature, dim=1)
    inter = 1 - _pearson_rows(p_student, p_teacher).mean()
    intra = 1 - _pearson_rows(p_student.T, p_teacher.T).mean()
    inter_term, intra_term = temperature**2 * inter, temperature**2 * intra
    kd = config.beta * inter_term + config.gamma * intra_term
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    total = config.ce_weight * ce + kd
    parts = {
        "ce": ce.detach(),
        "inter": inter_term.detach(),
        "intra": intra_term.detach(),
        "kd": kd.detach(),
    }
    return LossOutput(total=total, parts=parts)


IMPLEMENTATION = Method(
    two_views=False,
    loss_function=lambda config, student, teacher, targets, progress, smoothing, strong: dist_loss(
        student, teacher, targets, config, smoothing
    ),
    reads=lambda config: ((config.temperature, False),),
)
