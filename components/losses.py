"""Training losses. Each returns the scalar to minimise and its parts, for logging."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components.config import DistillConfig


@dataclass(frozen=True)
class LossOutput:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]


def label_loss(
    student_logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> LossOutput:
    """Cross-entropy on the labels alone: the teacher-free control."""
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return LossOutput(total=ce, parts={"ce": ce.detach()})


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    config: DistillConfig,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Knowledge distillation, Hinton, Vinyals and Dean 2015 ("Distilling the Knowledge in
    a Neural Network", arXiv:1503.02531):

        L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

    The KL term is averaged over the batch. Gradients of the softened term scale as 1/T^2,
    so the T^2 factor keeps its weight comparable to the label term across temperatures.
    Teacher logits may arrive as float16 from the cache; they are upcast first.
    """
    temperature, alpha = config.temperature, config.alpha
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    soft = kl * temperature**2
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    total = alpha * soft + (1 - alpha) * ce
    return LossOutput(total=total, parts={"kd": soft.detach(), "ce": ce.detach()})
