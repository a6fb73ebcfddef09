"""Training losses, all from cached teacher logits. Each returns the scalar to minimise and
its parts, for logging.

``targets`` are class indices (N,) or class probabilities (N, C) (mixup mixes two labels);
the target class of DKD is the most probable one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, assert_never

import torch
import torch.nn.functional as F

from components.config import (
    DISTDistill,
    DistillConfig,
    DKDDistill,
    HintonDistill,
    MLKDDistill,
    WTTMDistill,
)


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


Teacher = torch.Tensor | TeacherReadings  # full logits (N, C), or a top-k cache's readings


def teacher_at(teacher: Teacher, temperature: float, standardized: bool = False) -> torch.Tensor:
    """The teacher's logits as a loss reads them at ``temperature``. Full logits are the same
    at every temperature (cast up from float16 first); top-k readings are rebuilt for it."""
    if isinstance(teacher, torch.Tensor):
        logits = teacher.float()
        return standardize(logits) if standardized else logits
    return teacher.at(temperature, standardized)


def teacher_readings(config: DistillConfig) -> tuple[tuple[float, bool], ...]:
    """Every (temperature, standardized) at which ``config``'s method reads the teacher: what
    a top-k cache must hold to rebuild the teacher's distribution exactly for it."""
    match config:
        case HintonDistill() | DKDDistill():
            readings = [(config.temperature, config.standardize)]
        case DISTDistill():
            readings = [(config.temperature, False)]
        case WTTMDistill():
            # p^power renormalised is the softmax at T = 1 / power; its weight needs T = 1 too.
            readings = [(1.0, False), (1.0 / config.power, False)]
        case MLKDDistill():
            readings = [(1.0, False)]  # the confidence masks
            readings += [(t, config.standardize) for t in config.temperatures]
            readings += [(t, False) for t in config.temperatures]  # batch and class levels
        case _:
            assert_never(config)
    return tuple(sorted(set(readings)))


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


def hinton_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: Teacher,
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


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: Teacher,
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


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: Teacher,
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


def wttm_loss(
    student_logits: torch.Tensor,
    teacher_logits: Teacher,
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


def _kd_term(
    student: torch.Tensor, teacher: Teacher, temperature: float, standardized: bool
) -> torch.Tensor:
    """T^2 * mean over samples of KL(teacher_T || student_T), per sample (N,)."""
    s = standardize(student) if standardized else student
    t = teacher_at(teacher, temperature, standardized)
    log_s = F.log_softmax(s / temperature, dim=1)
    log_t = F.log_softmax(t / temperature, dim=1)
    return temperature**2 * (log_t.exp() * (log_t - log_s)).sum(1)


def _gram_term(
    student: torch.Tensor, teacher: Teacher, temperature: float, over: str
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
    teacher_weak: Teacher,
    teacher_strong: Teacher,
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
        instance = instance + f_m * _kd_term(student_weak, teacher_weak, t, std).mean()
        instance = instance + _kd_term(student_strong, teacher_strong, t, std).mean()
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


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: Teacher,
    targets: torch.Tensor,
    config: DistillConfig,
    progress_epochs: float,
    label_smoothing: float = 0.0,
    strong: tuple[torch.Tensor, Teacher] | None = None,
) -> LossOutput:
    """The configured method (``distill.kind``). ``strong``: the student's logits and the
    teacher's on the strong view of the same samples, for the two-view methods."""
    match config:
        case DKDDistill():
            return dkd_loss(
                student_logits, teacher_logits, targets, config, progress_epochs, label_smoothing
            )
        case HintonDistill():
            return hinton_kd_loss(student_logits, teacher_logits, targets, config, label_smoothing)
        case DISTDistill():
            return dist_loss(student_logits, teacher_logits, targets, config, label_smoothing)
        case WTTMDistill():
            return wttm_loss(student_logits, teacher_logits, targets, config, label_smoothing)
        case MLKDDistill():
            if strong is None:
                raise ValueError("distill.kind=mlkd needs the strong views' logits")
            student_strong, teacher_strong = strong
            return mlkd_loss(
                student_logits,
                student_strong,
                teacher_logits,
                teacher_strong,
                targets,
                config,
                label_smoothing,
            )
        case _:
            assert_never(config)
