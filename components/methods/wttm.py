"""``distill.kind: wttm``: weighted transformed teacher matching."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.config import WTTMDistill
from components.losses import LossOutput, TeacherLogits, teacher_at
from components.methods import Method


def wttm_loss(
    student_logits: torch.Tensor,
    teacher_logits: TeacherLogits,
    targets: torch.Tensor,
    config: WTTMDistill,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Weighted transformed teacher matching (Zheng and Yang, "Knowledge Distillation Based
    on Transformed Teacher Matching", ICLR 2024). With p_t = softmax(z_t), power g = 1/T:

        q_t = p_t^g / U,   U = sum_j p_t[j]^g          (= softmax(z_t / T): the teacher's
                                                        temperature, the student's left at 1)
        L = ce_weight * CE(z_s, y) + kd_weight * mean_i U_i * KL(q_t,i || softmax(z_s,i))

    Dropping the student's temperature turns KD into matching a power-transformed teacher
    plus a Renyi-entropy regulariser on the student; U (large when the teacher is unsure)
    weights each sample. Computed in log space: log U = logsumexp(g * log p_t).
    """
    g = config.power
    scaled = teacher_at(teacher_logits, 1.0 / g) * g  # z_t / T
    log_q_teacher = F.log_softmax(scaled, dim=1)
    # U_i = sum_j p_t[j]^g = exp(LSE(g z) - g LSE(z)): two log-sum-exps over all classes,
    # which a top-k cache holds exactly (a sum of the rebuilt p^g would not be).
    log_u = torch.logsumexp(scaled, dim=1) - g * torch.logsumexp(teacher_at(teacher_logits, 1.0), 1)
    weight = log_u.exp()
    log_q_student = F.log_softmax(student_logits, dim=1)
    kl = (log_q_teacher.exp() * (log_q_teacher - log_q_student)).sum(1)
    kd = (weight * kl).mean()
    ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
    total = config.ce_weight * ce + config.kd_weight * kd
    parts = {"ce": ce.detach(), "kd": kd.detach(), "weight": weight.mean().detach()}
    return LossOutput(total=total, parts=parts)


IMPLEMENTATION = Method(
    two_views=False,
    loss_function=lambda config, student, teacher, targets, progress, smoothing, strong: wttm_loss(
        student, teacher, targets, config, smoothing
    ),
    # p^power renormalised is the softmax at T = 1 / power; its weight needs T = 1 too.
    reads=lambda config: tuple(sorted({(1.0, False), (1.0 / config.power, False)})),
)
