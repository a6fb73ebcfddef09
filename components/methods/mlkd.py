"""``distill.kind: mlkd``: multi-level logit distillation from a weak and a strong view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.config import MLKDDistill
from components.losses import LossOutput, Reading, TeacherLogits, kl_per_sample, teacher_at
from components.methods import Method


def _gram_term(
    student: torch.Tensor, teacher: TeacherLogits, temperature: float, over: str
) -> torch.Tensor:
    """||G_t - G_s||_F^2 / n of the softened predictions' Gram matrices: over ``"classes"``
    G = P^T P (C x C, n = C), over ``"batch"`` G = P P^T (N x N, n = N)."""
    p_s = F.softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher_at(teacher, temperature) / temperature, dim=1)
    if over == "classes":
        g_s, g_t, n = p_s.T @ p_s, p_t.T @ p_t, p_s.shape[1]
    else:
        g_s, g_t, n = p_s @ p_s.T, p_t @ p_t.T, p_s.shape[0]
    return ((g_t - g_s) ** 2).sum() / n


def mlkd_loss(
    student_weak: torch.Tensor,
    student_strong: torch.Tensor,
    teacher_weak: TeacherLogits,
    teacher_strong: TeacherLogits,
    targets: torch.Tensor,
    config: MLKDDistill,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Multi-level logit distillation (Jin, Wang, Lin, "Multi-Level Logit Distillation",
    CVPR 2023), from a weak view w and a strong view s of every sample, summed over the
    temperatures T in ``temperatures``:

        instance  I = sum_T [ f_m * KD_T(w) + KD_T(s) ]     KD_T = T^2 mean_i KL(p_t || p_s)
        batch     B = sum_T f_m * ||P_t P_t^T - P_s P_s^T||_F^2 / N          (weak view)
        class     C = sum_T f_c * ||P_t^T P_t - P_s^T P_s||_F^2 / classes    (weak view)
        L = ce_weight * (CE(w) + CE(s)) + kd_weight * (I + B + C)

    with P = softmax(z / T) over the batch. f_m is the fraction of the batch whose teacher
    confidence on the weak view (max softmax at T = 1) is at most the batch median, f_c the
    fraction of classes whose summed teacher probability is at most the median over classes:
    the official implementation multiplies each weak-view term, already averaged, by these
    masks and averages again, which is this scaling. Two departures from that code, both
    from its evident intent: every strong-view instance term reads the strong view (the code
    reads the weak one at two of the five temperatures), and the unused strong-view batch
    and class terms are not computed. With ``standardize`` the instance terms z-score the
    logits first (Sun et al. 2024, who report MLKD with it).
    """
    with torch.no_grad():
        p_weak = F.softmax(teacher_at(teacher_weak, 1.0), dim=1)
        confidence = p_weak.max(dim=1).values
        f_m = (confidence <= torch.quantile(confidence, 0.5)).float().mean()
        class_mass = p_weak.sum(dim=0)
        f_c = (class_mass <= torch.quantile(class_mass, 0.5)).float().mean()
    std = config.standardize
    zero = student_weak.new_zeros(())
    instance, batch, classes = zero, zero, zero
    for t in config.temperatures:
        instance = instance + f_m * kl_per_sample(student_weak, teacher_weak, t, std).mean()
        instance = instance + kl_per_sample(student_strong, teacher_strong, t, std).mean()
        batch = batch + f_m * _gram_term(student_weak, teacher_weak, t, "batch")
        classes = classes + f_c * _gram_term(student_weak, teacher_weak, t, "classes")
    ce = F.cross_entropy(student_weak, targets, label_smoothing=label_smoothing)
    ce = ce + F.cross_entropy(student_strong, targets, label_smoothing=label_smoothing)
    kd = instance + batch + classes
    total = config.ce_weight * ce + config.kd_weight * kd
    parts = {
        "ce": ce.detach(),
        "instance": instance.detach(),
        "batch": batch.detach(),
        "class": classes.detach(),
        "kd": kd.detach(),
    }
    return LossOutput(total=total, parts=parts)


def _two_view_loss(
    config: MLKDDistill,
    student: torch.Tensor,
    teacher: TeacherLogits,
    targets: torch.Tensor,
    progress: float,
    smoothing: float,
    strong: tuple[torch.Tensor, TeacherLogits] | None,
) -> LossOutput:
    if strong is None:
        raise ValueError("distill.kind=mlkd needs the strong views' logits")
    student_strong, teacher_strong = strong
    return mlkd_loss(student, student_strong, teacher, teacher_strong, targets, config, smoothing)


def _readings(config: MLKDDistill) -> tuple[Reading, ...]:
    readings = {(1.0, False)}  # the confidence masks
    readings |= {(t, config.standardize) for t in config.temperatures}
    readings |= {(t, False) for t in config.temperatures}  # batch and class levels
    return tuple(sorted(readings))


IMPLEMENTATION = Method(two_views=True, loss_function=_two_view_loss, reads=_readings)
