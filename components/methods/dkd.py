"""``distill.kind: dkd``: decoupled knowledge distillation (target and non-target classes apart)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.config import DKDDistill
from components.losses import LossOutput, TeacherLogits, standardize, teacher_at
from components.methods import Method


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: TeacherLogits,
    targets: torch.Tensor,
    config: DKDDistill,
    progress_epochs: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Decoupled knowledge distillation (Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge
    Distillation", CVPR 2022). With p = softmax(z / T), target class t:

        b = [p_t, 1 - p_t]                       (target vs the rest)
        p_hat = softmax over the non-target classes of z / T
        TCKD = KL(b_teacher || b_student),  NCKD = KL(p_hat_teacher || p_hat_student)
        L = ce_weight * CE(z_s, y) + w * T^2 * (alpha * TCKD + beta * NCKD)

    where w = min(progress_epochs / warmup_epochs, 1) ramps the KD term in, as in the
    official implementation. With ``standardize`` the logits are z-scored first.
    """
    temperature = config.temperature
    student = standardize(student_logits) if config.standardize else student_logits
    teacher = teacher_at(teacher_logits, temperature, config.standardize)
    target = targets if targets.ndim == 1 else targets.argmax(dim=1)
    gt = F.one_hot(target, student.shape[1]).bool()
    p_student = F.softmax(student / temperature, dim=1)
    p_teacher = F.softmax(teacher / temperature, dim=1)
    # Binary target / non-target distributions.
    b_student = torch.stack([(p_student * gt).sum(1), (p_student * ~gt).sum(1)], dim=1)
    b_teacher = torch.stack([(p_teacher * gt).sum(1), (p_teacher * ~gt).sum(1)], dim=1)
    tckd = F.kl_div(b_student.clamp_min(1e-12).log(), b_teacher, reduction="batchmean")
    # Distributions over the non-target classes only: mask the target logit to -inf.
    masked_student = (student / temperature).masked_fill(gt, float("-inf"))
    masked_teacher = (teacher / temperature).masked_fill(gt, float("-inf"))
    log_q_student = F.log_softmax(masked_student, dim=1).masked_fill(gt, 0.0)
    log_q_teacher = F.log_softmax(masked_teacher, dim=1).masked_fill(gt, 0.0)
    nckd = (log_q_teacher.exp() * (log_q_teacher - log_q_student)).sum(1).mean()
    warm = min(progress_epochs / config.warmup_epochs, 1.0) if config.warmup_epochs else 1.0
    kd = temperature**2 * (config.alpha * tckd + config.beta * nckd)
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    total = config.ce_weight * ce + warm * kd
    parts = {
        "ce": ce.detach(),
        "tckd": (temperature**2 * tckd).detach(),
        "nckd": (temperature**2 * nckd).detach(),
        "kd": kd.detach(),
    }
    return LossOutput(total=total, parts=parts)


IMPLEMENTATION = Method(
    two_views=False,
    loss_function=lambda config, student, teacher, targets, progress, smoothing, strong: dkd_loss(
        student, teacher, targets, config, progress, smoothing
    ),
    reads=lambda config: ((config.temperature, config.standardize),),
)
