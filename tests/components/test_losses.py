"""Golden values, computed by hand.

Sample A: student z_s = [1, 2, 3], teacher z_t = [3, 2, 1], label 0, T = 2.
  softmax(z/2) of [3, 2, 1] is p = [0.506480, 0.307196, 0.186324]; the student's is p reversed.
  KL(p_t || p_s) = sum p_t log(p_t / p_s) = (p_0 - p_2) * log(e^{(3-1)/2}) = p_0 - p_2 = 0.320157
  T^2 * KL = 1.280627;  CE(z_s, 0) = log(e^1 + e^2 + e^3) - 1 = 2.407606
Sample B: student [0.5, 0.5, 0.5], teacher [0, 0, 0], label 0: KL = 0, CE = log 3 = 1.098612.
"""

import math

import pytest
import torch

from components.config import DISTDistill, DKDDistill, HintonDistill, MLKDDistill, WTTMDistill
from components.losses import (
    dist_loss,
    distillation_loss,
    dkd_loss,
    hinton_kd_loss,
    label_loss,
    mlkd_loss,
    standardize,
    teacher_readings,
    wttm_loss,
)

A_SOFT, A_CE, B_CE = 1.2806266713, 2.4076059644, math.log(3)


def test_hinton_single_sample_golden_values() -> None:
    out = hinton_kd_loss(
        torch.tensor([[1.0, 2.0, 3.0]]),
        torch.tensor([[3.0, 2.0, 1.0]]),
        torch.tensor([0]),
        HintonDistill(temperature=2.0, alpha=0.5),
    )
    assert out.parts["kd"].item() == pytest.approx(A_SOFT, abs=1e-6)
    assert out.parts["ce"].item() == pytest.approx(A_CE, abs=1e-6)
    assert out.total.item() == pytest.approx(0.5 * A_SOFT + 0.5 * A_CE, abs=1e-6)


def test_hinton_batch_mean_and_float16_cached_teacher() -> None:
    teacher = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float16)
    out = hinton_kd_loss(
        torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]),
        teacher,
        torch.tensor([0, 0]),
        HintonDistill(temperature=2.0, alpha=0.25),
    )
    soft, ce = A_SOFT / 2, (A_CE + B_CE) / 2
    assert out.parts["kd"].item() == pytest.approx(soft, abs=1e-5)
    assert out.total.item() == pytest.approx(0.25 * soft + 0.75 * ce, abs=1e-5)


def test_temperature_squared_scaling() -> None:
    # For T -> large, KL ~ sum (dz)^2 / (2 n T^2) on centred logits: T^2 * KL tends to a constant.
    zs, zt = torch.tensor([[0.1, 0.0, -0.1]]), torch.tensor([[-0.1, 0.0, 0.1]])
    y = torch.tensor([1])
    values = [
        hinton_kd_loss(zs, zt, y, HintonDistill(temperature=t, alpha=1)).total.item()
        for t in (10, 100)
    ]
    expected = ((0.2**2) * 2 / 3 - 0) / 2  # variance of (z_s - z_t) over classes, halved
    assert values[1] == pytest.approx(expected, rel=1e-3)
    assert values[0] == pytest.approx(values[1], rel=0.05)


def test_alpha_extremes_and_gradients() -> None:
    zs = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    zt, y = torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
    only_labels = hinton_kd_loss(zs, zt, y, HintonDistill(temperature=2, alpha=0))
    assert only_labels.total.item() == pytest.approx(A_CE, abs=1e-6)
    assert label_loss(zs, y).total.item() == pytest.approx(A_CE, abs=1e-6)
    only_teacher = hinton_kd_loss(zs, zt, y, HintonDistill(temperature=2, alpha=1))
    only_teacher.total.backward()
    # gradient of T^2 KL w.r.t. z_s is T (p_s - p_t): pushes the student towards the teacher
    p = torch.softmax(torch.tensor([3.0, 2.0, 1.0]) / 2, 0)
    assert torch.allclose(zs.grad[0], 2 * (p.flip(0) - p), atol=1e-6)


# DKD on sample A (label 0, T = 2), by hand:
#   b_s = [p_s0, 1 - p_s0] = [0.186324, 0.813676], b_t = [0.506480, 0.493520]
#   TCKD = 0.506480 * log(0.506480 / 0.186324) + 0.493520 * log(0.493520 / 0.813676)
#        = 0.506480 * 1 + 0.493520 * (-0.5) = 0.259720
#   non-target classes {1, 2}: q_s = softmax([1, 1.5]) = [0.377541, 0.622459], q_t reversed
#   NCKD = (0.622459 - 0.377541) * 0.5 = 0.122459
#   DKD (alpha 1, beta 8) = 4 * (0.259720 + 8 * 0.122459) = 4.957573;  + CE 2.407606
TCKD, NCKD = 0.2597198, 0.1224593


def test_dkd_golden_values_and_warmup() -> None:
    zs, zt, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
    config = DKDDistill(temperature=2.0, alpha=1.0, beta=8.0, warmup_epochs=5)
    full = dkd_loss(zs, zt, y, config, progress_epochs=10)
    assert full.parts["tckd"].item() == pytest.approx(4 * TCKD, abs=1e-5)
    assert full.parts["nckd"].item() == pytest.approx(4 * NCKD, abs=1e-5)
    assert full.total.item() == pytest.approx(A_CE + 4 * (TCKD + 8 * NCKD), abs=1e-5)
    half = dkd_loss(zs, zt, y, config, progress_epochs=2.5)
    assert half.total.item() == pytest.approx(A_CE + 0.5 * 4 * (TCKD + 8 * NCKD), abs=1e-5)
    # mixed (probability) targets use the most probable class as DKD's target
    soft_targets = torch.tensor([[0.7, 0.3, 0.0]])
    mixed = dkd_loss(zs, zt, soft_targets, config, progress_epochs=10)
    assert mixed.parts["tckd"].item() == pytest.approx(4 * TCKD, abs=1e-5)


def test_standardize_makes_the_loss_scale_free() -> None:
    # [2, 4, 6] z-scores to [-1, 0, 1], like [1, 2, 3]: the same loss as sample A's [1, 2, 3]
    assert standardize(torch.tensor([[2.0, 4.0, 6.0]])).tolist() == [[-1.0, 0.0, 1.0]]
    config = HintonDistill(temperature=2.0, alpha=1.0, standardize=True)
    out = hinton_kd_loss(
        torch.tensor([[2.0, 4.0, 6.0]]),
        torch.tensor([[30.0, 20.0, 10.0]]),
        torch.tensor([0]),
        config,
    )
    assert out.parts["kd"].item() == pytest.approx(A_SOFT, abs=1e-5)


def test_dispatch_by_kind() -> None:
    zs, zt, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
    assert "tckd" in distillation_loss(zs, zt, y, DKDDistill(), 1.0).parts
    assert "tckd" not in distillation_loss(zs, zt, y, HintonDistill(), 1.0).parts


# DIST (T = 1) on a batch of two, by hand. With p = softmax([1, 2, 3]) = [a, b, c]:
#   sample 1: student [1, 2, 3] -> [a, b, c], teacher [3, 2, 1] -> [c, b, a]
#   sample 2: student [3, 1, 2] -> [c, a, b], teacher [1, 3, 2] -> [a, c, b]
# Inter-class: both samples correlate a permutation of (a, b, c) with one that swaps a and c,
#   rho = (2 a' c' + b'^2) / (a'^2 + b'^2 + c'^2) with x' = x - 1/3, so inter = 1 - rho.
# Intra-class: with two samples a class's correlation is the sign of (change in the student's
#   probability) x (change in the teacher's): class 0 goes a -> c in the student and c -> a in
#   the teacher, class 1 b -> a vs b -> c, class 2 c -> b vs a -> b: all -1, so intra = 2 at
#   every temperature (the softmax keeps the order), and T^2 * intra = 8 at T = 2.
# CE with labels [0, 0]: (log(e + e^2 + e^3) - 1 + log(e + e^2 + e^3) - 3) / 2.
def _dist_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    student = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    return student, teacher, torch.tensor([0, 0])


def test_dist_golden_values() -> None:
    lse = math.log(math.e + math.e**2 + math.e**3)
    a, b, c = (math.exp(k - lse) - 1 / 3 for k in (1, 2, 3))
    rho = (2 * a * c + b * b) / (a * a + b * b + c * c)
    student, teacher, y = _dist_case()
    out = dist_loss(student, teacher, y, DISTDistill(temperature=1.0, beta=1.0, gamma=2.0))
    assert out.parts["inter"].item() == pytest.approx(1 - rho, abs=1e-6)
    assert out.parts["intra"].item() == pytest.approx(2.0, abs=1e-6)
    ce = (lse - 1 + lse - 3) / 2
    assert out.total.item() == pytest.approx(ce + (1 - rho) + 2 * 2.0, abs=1e-5)
    hot = dist_loss(student, teacher, y, DISTDistill(temperature=2.0, ce_weight=0.0))
    assert hot.parts["intra"].item() == pytest.approx(8.0, abs=1e-5)
    # a student that matches the teacher has nothing left to learn from it
    same = dist_loss(teacher, teacher, y, DISTDistill(temperature=1.0))
    assert same.parts["kd"].item() == pytest.approx(0.0, abs=1e-6)


# WTTM on one sample, two classes, by hand: teacher p_t = [0.8, 0.2], power 1/2:
#   p^0.5 = [sqrt(0.8), sqrt(0.2)], U = sqrt(0.8) + sqrt(0.2) = 1.341641, q_t = [2/3, 1/3];
#   student [0, 0] -> [1/2, 1/2]: KL(q_t || s) = 2/3 log(4/3) + 1/3 log(2/3);
#   CE(label 0) = log 2.
def test_wttm_golden_values() -> None:
    teacher = torch.tensor([[math.log(0.8), math.log(0.2)]])
    config = WTTMDistill(power=0.5, kd_weight=3.0, ce_weight=0.5)
    out = wttm_loss(torch.zeros(1, 2), teacher, torch.tensor([0]), config)
    u = math.sqrt(0.8) + math.sqrt(0.2)
    kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert out.parts["weight"].item() == pytest.approx(u, abs=1e-6)
    assert out.parts["kd"].item() == pytest.approx(u * kl, abs=1e-6)
    assert out.total.item() == pytest.approx(0.5 * math.log(2) + 3.0 * u * kl, abs=1e-6)
    # a teacher shifted by a constant is the same teacher
    shifted = wttm_loss(torch.zeros(1, 2), teacher + 5.0, torch.tensor([0]), config)
    assert shifted.total.item() == pytest.approx(out.total.item(), abs=1e-5)


def _probs(*rows: tuple[float, float]) -> torch.Tensor:
    """Logits whose softmax (T = 1) is each row."""
    return torch.tensor(rows).log()


def test_mlkd_strong_view_instance_term_and_both_views_cross_entropy() -> None:
    # The weak views agree exactly (every weak term is 0); on the strong view the teacher says
    # [0.8, 0.2] and the student [1/2, 1/2]: KL = 0.8 log 1.6 + 0.2 log 0.4 for both samples.
    weak = _probs((0.8, 0.2), (0.6, 0.4))
    strong_teacher = _probs((0.8, 0.2), (0.8, 0.2))
    config = MLKDDistill(temperatures=(1.0,), kd_weight=2.0, ce_weight=0.5)
    y = torch.tensor([0, 0])
    out = mlkd_loss(weak, torch.zeros(2, 2), weak, strong_teacher, y, config)
    kl = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert out.parts["instance"].item() == pytest.approx(kl, abs=1e-6)
    assert out.parts["batch"].item() == pytest.approx(0.0, abs=1e-7)
    assert out.parts["class"].item() == pytest.approx(0.0, abs=1e-7)
    ce = -(math.log(0.8) + math.log(0.6)) / 2 + math.log(2)
    assert out.parts["ce"].item() == pytest.approx(ce, abs=1e-6)
    assert out.total.item() == pytest.approx(0.5 * ce + 2.0 * kl, abs=1e-6)


def test_mlkd_weak_view_masks_batch_and_class_terms() -> None:
    # Teacher on the weak views P_t = [[0.8, 0.2], [0.6, 0.4]], student uniform (P_s = 1/2),
    # strong views equal (no strong term). Confidences [0.8, 0.6], median 0.7: f_m = 1/2;
    # class masses [1.4, 0.6], median 1.0: f_c = 1/2. At T = 1:
    #   instance = f_m * mean(KL([.8, .2] || u), KL([.6, .4] || u))
    #   batch: P_t P_t^T = [[.68, .56], [.56, .52]] - 1/2 -> squares .0324 + 2 * .0036 + .0004
    #          = .04, over N = 2: .02, times f_m: .01
    #   class: P_t^T P_t = [[1, .4], [.4, .2]] - 1/2 -> .25 + 2 * .01 + .09 = .36, over C = 2:
    #          .18, times f_c: .09
    teacher_weak = _probs((0.8, 0.2), (0.6, 0.4))
    strong = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    config = MLKDDistill(temperatures=(1.0,), kd_weight=1.0, ce_weight=1.0)
    out = mlkd_loss(torch.zeros(2, 2), strong, teacher_weak, strong, torch.tensor([0, 0]), config)
    kl_1 = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    kl_2 = 0.6 * math.log(1.2) + 0.4 * math.log(0.8)
    assert out.parts["instance"].item() == pytest.approx(0.5 * (kl_1 + kl_2) / 2, abs=1e-6)
    assert out.parts["batch"].item() == pytest.approx(0.01, abs=1e-6)
    assert out.parts["class"].item() == pytest.approx(0.09, abs=1e-6)
    # every level is summed over the temperatures: two equal ones double it
    twice = mlkd_loss(
        torch.zeros(2, 2),
        strong,
        teacher_weak,
        strong,
        torch.tensor([0, 0]),
        MLKDDistill(temperatures=(1.0, 1.0), kd_weight=1.0, ce_weight=0.0),
    )
    assert twice.parts["kd"].item() == pytest.approx(2 * out.parts["kd"].item(), abs=1e-6)


def test_every_method_dispatches_and_two_view_ones_need_the_strong_view() -> None:
    zs, zt, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
    for config in (DISTDistill(), WTTMDistill()):
        out = distillation_loss(zs, zt, y, config, 1.0)
        assert math.isfinite(out.total.item()) and out.parts["kd"].item() > 0
    with pytest.raises(ValueError, match="strong views"):
        distillation_loss(zs, zt, y, MLKDDistill(), 1.0)
    out = distillation_loss(zs, zt, y, MLKDDistill(), 1.0, strong=(zs, zt))
    assert set(out.parts) == {"ce", "instance", "batch", "class", "kd"}


def test_readings_name_every_temperature_a_method_reads() -> None:
    assert teacher_readings(HintonDistill(temperature=2.0, standardize=True)) == ((2.0, True),)
    assert teacher_readings(WTTMDistill(power=0.25)) == ((1.0, False), (4.0, False))
    mlkd = teacher_readings(MLKDDistill(temperatures=(2.0, 3.0), standardize=True))
    assert mlkd == ((1.0, False), (2.0, False), (2.0, True), (3.0, False), (3.0, True))
