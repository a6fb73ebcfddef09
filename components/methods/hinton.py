"""``distill.kind: hinton``: knowledge distillation as Hinton, Vinyals and Dean defined it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.config import HintonDistill
from components.losses import LossOutput, TeacherLogits, standardize, teacher_at
from components.methods import Method


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: TeacherLogits,
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
    student = standardize(student_logits) if config.standardize else student_logits
    teacher = teacher_at(teacher_logits, temperature, config.standardize)
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    soft = kl * temperature**2
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    total = alpha * soft + (1 - alpha) * ce
    return LossOutput(total=total, parts={"kd": soft.detach(), "ce": ce.detach()})


IMPLEMENTATION = Method(
    two_views=False,
    loss_function=lambda config, student, teacher, targets, progress, smoothing, strong: (
        hinton_kd_loss(student, teacher, targets, config, smoothing)
    ),
    reads=lambda config: ((config.temperature, config.standardize),),
)
