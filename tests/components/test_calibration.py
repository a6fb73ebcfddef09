"""Expected calibration error and temperature scaling, against figures computed by hand and
against a model whose true temperature is known."""

import numpy as np
import pytest

from components.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability,
    softmax,
)


def test_ece_by_hand() -> None:
    # two predictions at confidence 0.9 (one right) and two at 0.6 (both right):
    # bins [0.867, 0.933) and [0.6, 0.667): |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.4
    p9, p6 = np.log([0.9, 0.1]), np.log([0.6, 0.4])
    logits = np.array([p9, p9, p6, p6])
    labels = np.array([0, 1, 0, 0])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.4)
    rows = reliability(logits, labels)
    assert sum(r["count"] for r in rows) == 4 and len(rows) == 15


def test_the_fitted_temperature_is_the_true_one_and_never_changes_the_class() -> None:
    # labels drawn from softmax(z), the model reporting 3 z: overconfident by T = 3
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, size=(20000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(z)])
    reported = 3.0 * z
    assert fit_temperature(reported, labels) == pytest.approx(3.0, rel=0.05)
    half = len(labels) // 2
    result = calibrate(reported[:half], labels[:half], reported[half:], labels[half:])
    assert result.ece_test_after < result.ece_test_before / 3
    assert result.ece_val_after < result.ece_val_before
    scaled = softmax(reported, result.temperature)
    assert (scaled.argmax(1) == reported.argmax(1)).all()
