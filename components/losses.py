"""Training losses, all from cached teacher logits. Each returns the scalar to minimise and
its parts, for logging.

``targets`` are class indices (N,) or class probabilities (N, C) (mixup mixes two labels);
the target class of DKD is the most probable one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

import torch
import torch.nn.functional as F

from components.config import DistillConfig, DKDDistill, HintonDistill


@dataclass(frozen=True)
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation",
    CVPR 2024): z-score each sample's logits, z' = (z - mean(z)) / std(z), so the student
    matches the teacher's logit *relations* rather than their scale.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def label_loss(
    student_logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> LossOutput:
    """Cross-entropy on the labels alone: the teacher-free control."""
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    return LossOutput(total=ce, parts={"ce": ce.detach()})


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    config: HintonDistill,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Knowledge distillation, Hinton, Vinyals and Dean 2015 ("Distilling the Knowledge in
    a Neural Network", arXiv:1503.02531):

        L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

    The KL term is averaged over the batch. Gradients of the softened term scale as 1/T^2,
    so the T^2 factor keeps its weight comparable to the label term across temperatures.
    With ``standardize`` both logit vectors are z-scored first (Sun et al. 2024).
    Teacher logits may arrive as float16 from the cache; they are upcast first.
    """
    temperature, alpha = config.temperature, config.alpha
    student, teacher = student_logits, teacher_logits.float()
    if config.standardize:
        student, teacher = standardize(student), standardize(teacher)
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    soft = kl * temperature**2
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    total = alpha * soft + (1 - alpha) * ce
    return LossOutput(total=total, parts={"kd": soft.detach(), "ce": ce.detach()})


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
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
    student, teacher = student_logits, teacher_logits.float()
    if config.standardize:
        student, teacher = standardize(student), standardize(teacher)
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


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    config: DistillConfig,
    progress_epochs: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """The configured method (``distill.kind``)."""
    match config:
        case DKDDistill():
            return dkd_loss(
                student_logits, teacher_logits, targets, config, progress_epochs, label_smoothing
            )
        case HintonDistill():
            return hinton_kd_loss(student_logits, teacher_logits, targets, config, label_smoothing)
        case _:
            assert_never(config)
