"""Hinton et al.'s loss, golden values computed by hand.

Sample A: student z_s = [1, 2, 3], teacher z_t = [3, 2, 1], label 0, T = 2.
  softmax(z/2) of [3, 2, 1] is p = [0.506480, 0.307196, 0.186324]; the student's is p reversed.
  KL(p_t || p_s) = sum p_t log(p_t / p_s) = (p_0 - p_2) * log(e^{(3-1)/2}) = p_0 - p_2 = 0.320157
  T^2 * KL = 1.280627;  CE(z_s, 0) = log(e^1 + e^2 + e^3) - 1 = 2.407606
Sample B: student [0.5, 0.5, 0.5], teacher [0, 0, 0], label 0: KL = 0, CE = log 3 = 1.098612.
"""

import math

import pytest
import torch

from components.config import HintonDistill
from components.losses import label_loss
from components.methods import method_of
from components.methods.hinton import hinton_kd_loss

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


def test_standardize_makes_the_loss_scale_free() -> None:
    # [2, 4, 6] z-scores to [-1, 0, 1], like [1, 2, 3]: the same loss as sample A's [1, 2, 3]
    config = HintonDistill(temperature=2.0, alpha=1.0, standardize=True)
    out = hinton_kd_loss(
        torch.tensor([[2.0, 4.0, 6.0]]),
        torch.tensor([[30.0, 20.0, 10.0]]),
        torch.tensor([0]),
        config,
    )
    assert out.parts["kd"].item() == pytest.approx(A_SOFT, abs=1e-5)


def test_hinton_reads_the_teacher_at_its_temperature() -> None:
    method = method_of(HintonDistill(temperature=2.0, standardize=True))
    assert not method.two_views
    assert method.readings(HintonDistill(temperature=2.0, standardize=True)) == ((2.0, True),)
