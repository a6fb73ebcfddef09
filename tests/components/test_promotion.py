from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import ExportConfig, PromotionConfig
from components.data import Dataset
from components.models import build_model
from components.onnx_export import export_onnx
from components.promotion import (
    IncomparableError,
    Scores,
    decide,
    decision_markdown,
    incomparable,
    score_models,
)
from components.quantize import onnx_accuracy

POLICY = PromotionConfig(max_accuracy_drop=0.002, max_latency_ratio=1.2)


@pytest.mark.parametrize(
    ("challenger", "promote", "why"),
    [
        (Scores(0.970, 0.10), True, "promoted"),  # better and as fast
        (Scores(0.959, 0.10), True, "promoted"),  # 0.1 point lower: within the margin
        (Scores(0.957, 0.10), False, "0.30 points below"),  # 0.3 point lower: too much
        (Scores(0.990, 0.13), False, "1.30x the champion"),  # more accurate, too slow
        (Scores(0.950, 0.13), False, "points below"),  # both, both named
    ],
)
def test_policy_compares_accuracy_and_latency(challenger: Scores, promote: bool, why: str) -> None:
    decision = decide(challenger, Scores(0.960, 0.10), POLICY)
    assert decision.promote is promote and why in decision.reason
    assert decision.accuracy_drop == pytest.approx(0.960 - challenger.accuracy)
    assert decision.latency_ratio == pytest.approx(challenger.p50_ms / 0.10)
    if challenger == Scores(0.950, 0.13):
        assert "1.30x" in decision.reason


def test_first_model_is_promoted_unless_the_policy_says_otherwise() -> None:
    assert decide(Scores(0.5, 1.0), None, POLICY).promote
    decision = decide(Scores(0.5, 1.0), None, POLICY.model_copy(update={"promote_first": False}))
    assert not decision.promote and "promote_first is off" in decision.reason


def test_decision_record_holds_both_sides_and_the_policy() -> None:
    decision = decide(Scores(0.957, 0.11), Scores(0.960, 0.10), POLICY)
    record = decision_markdown(decision, "kd-student", "7", "5")
    assert "NOT PROMOTED" in record
    assert "| challenger (version 7) | 0.9570 | 0.1100 |" in record
    assert "| champion (version 5) | 0.9600 | 0.1000 |" in record
    assert "max_accuracy_drop = 0.002" in record and "max_latency_ratio = 1.2" in record
    assert decision.as_dict()["champion"] == {"accuracy": 0.96, "p50_ms": 0.1}


def _export(tmp_path: Path, name: str, dataset: Dataset, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_model("cnn_tiny", 1, 10).eval()
    return Path(export_onnx(model, dataset, tmp_path / f"{name}.onnx", ExportConfig(), {}).path)


def test_scores_are_measured_now_on_the_test_split(tmp_path: Path, mnist_dataset: Dataset) -> None:
    paths = {
        "challenger": _export(tmp_path, "a", mnist_dataset, 0),
        "champion": _export(tmp_path, "b", mnist_dataset, 1),
    }
    policy = PromotionConfig(warmup=2, iterations=20)
    scores = score_models(paths, mnist_dataset, policy)
    for name, path in paths.items():
        assert scores[name].accuracy == onnx_accuracy(path, mnist_dataset)
        assert scores[name].p50_ms > 0
    # two different random models really are scored separately
    assert scores["challenger"].accuracy != scores["champion"].accuracy


def test_a_champion_for_other_classes_cannot_be_scored(
    tmp_path: Path, mnist_dataset: Dataset
) -> None:
    torch.manual_seed(0)
    other = build_model("cnn_tiny", 1, 7).eval()
    path = tmp_path / "other.onnx"
    torch.onnx.export(
        other,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamo=False,
    )
    with pytest.raises(IncomparableError, match="7 output classes, the dataset has 10"):
        score_models({"champion": path}, mnist_dataset, PromotionConfig(iterations=5))
    decision = incomparable(Scores(0.9, 0.1), "7 output classes", POLICY)
    assert not decision.promote and "cannot be scored" in decision.reason
    assert np.isclose(decision.challenger.accuracy, 0.9)
