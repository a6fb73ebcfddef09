"""DIST: golden values computed by hand."""

import math

import pytest
import torch

from components.config import DISTDistill
from components.methods.dist import dist_loss


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
