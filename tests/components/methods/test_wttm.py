"""WTTM: golden values computed by hand."""

import math

import pytest
import torch

from components.config import WTTMDistill
from components.methods import method_of
from components.methods.wttm import wttm_loss


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


def test_wttm_reads_the_teacher_at_one_and_at_its_temperature() -> None:
    config = WTTMDistill(power=0.25)
    assert method_of(config).readings(config) == ((1.0, False), (4.0, False))
