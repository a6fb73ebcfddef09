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

from components.losses import kl_per_sample, label_loss, standardize, teacher_at

A_SOFT, A_CE = 1.2806266713, 2.4076059644


def test_label_loss_is_the_cross_entropy_and_sums_both_views() -> None:
    zs, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0])
    assert label_loss(zs, y).total.item() == pytest.approx(A_CE, abs=1e-6)
    assert label_loss(zs, y, strong_logits=zs).total.item() == pytest.approx(2 * A_CE, abs=1e-6)


def test_kl_per_sample_is_t_squared_kl_for_each_sample() -> None:
    zs = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    zt = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 0.0]])
    assert kl_per_sample(zs, zt, 2.0, False).tolist() == pytest.approx([A_SOFT, 0.0], abs=1e-5)


def test_standardize_z_scores_and_teacher_at_upcasts() -> None:
    assert standardize(torch.tensor([[2.0, 4.0, 6.0]])).tolist() == [[-1.0, 0.0, 1.0]]
    half = torch.tensor([[3.0, 2.0, 1.0]], dtype=torch.float16)
    assert teacher_at(half, 4.0).dtype == torch.float32
    assert teacher_at(half, 4.0, standardized=True)[0].tolist() == pytest.approx([1.0, 0.0, -1.0])
    assert not math.isnan(teacher_at(half, 1.0).sum().item())
