"""Multi-level logit distillation: golden values computed by hand."""

import math

import pytest
import torch

from components.config import MLKDDistill
from components.methods import distillation_loss, method_of
from components.methods.mlkd import mlkd_loss


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


def test_mlkd_needs_the_strong_view_and_reads_every_temperature() -> None:
    zs, zt, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
    assert method_of(MLKDDistill()).two_views
    with pytest.raises(ValueError, match="strong views"):
        distillation_loss(zs, zt, y, MLKDDistill(), 1.0)
    out = distillation_loss(zs, zt, y, MLKDDistill(), 1.0, strong=(zs, zt))
    assert set(out.parts) == {"ce", "instance", "batch", "class", "kd"}
    config = MLKDDistill(temperatures=(2.0, 3.0), standardize=True)
    readings = method_of(config).readings(config)
    assert readings == ((1.0, False), (2.0, False), (2.0, True), (3.0, False), (3.0, True))
