"""Decoupled KD: golden values computed by hand on sample A (student [1, 2, 3], teacher [3, 2, 1],
label 0).
"""

import pytest
import torch

from components.config import DKDDistill
from components.methods import distillation_loss, method_of
from components.methods.dkd import dkd_loss

A_CE = 2.4076059644


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


def test_dkd_dispatches_through_the_registry() -> None:
    zs, zt, y = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([0])
    assert "tckd" in distillation_loss(zs, zt, y, DKDDistill(), 1.0).parts
    assert method_of(DKDDistill(temperature=3.0)).readings(DKDDistill(temperature=3.0)) == (
        (3.0, False),
    )
