"""Champion/challenger decisions on constructed prediction vectors, and scoring real ONNX
models on a leakage-free evaluation set, each on its own input recipe."""

from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import ExportConfig, PromotionConfig
from components.data import Dataset, example_hashes
from components.models import build_model
from components.onnx_export import export_onnx
from components.promotion import (
    EvaluationSet,
    IncomparableError,
    Scores,
    decide,
    decision_markdown,
    evaluation_set,
    first_model,
    incomparable,
    min_examples,
    own_inputs,
    score_models,
)

POLICY = PromotionConfig()  # the default policy: these are its promises


def scores(correct: np.ndarray, p50: float = 0.1) -> Scores:
    rounds = p50 * (1 + 0.01 * np.sin(np.arange(10)))  # a little round-to-round noise
    return Scores(np.asarray(correct, bool), rounds)


def evaluation(n: int, removed: int = 0) -> EvaluationSet:
    return EvaluationSet(
        np.zeros((n, 1, 2, 2), np.uint8), np.zeros(n, int), "val", n + removed, removed
    )


def vectors(n: int, accuracy: float, extra_wrong: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A champion right on ``accuracy`` of ``n`` examples, and a challenger wrong on
    ``extra_wrong`` more of them (right where the champion is)."""
    champion = np.arange(n) >= round(n * (1 - accuracy))
    challenger = champion.copy()
    challenger[np.flatnonzero(champion)[:extra_wrong]] = False
    return challenger, champion


def test_identical_models_are_promoted_from_the_fewest_examples_the_margin_needs() -> None:
    assert min_examples(POLICY) == 381  # 1 point at 95%: z^2 (1 - m) / m
    assert min_examples(PromotionConfig(max_accuracy_drop=0.005)) == 765
    assert min_examples(PromotionConfig(min_examples=100)) == 100  # set: as set
    rng = np.random.default_rng(0)
    for n in (381, 500, 2000):
        correct = rng.random(n) < 0.95
        decision = decide(scores(correct), scores(correct), evaluation(n), POLICY)
        assert decision.promote and decision.accuracy_difference is not None
        assert (
            decision.accuracy_difference.estimate == 0 and decision.accuracy_difference.p_value == 1
        )
    # one example fewer, and even a perfect copy cannot be shown within the margin: not
    # passing says nothing against it, so it is not rejected but left to a person
    correct = rng.random(380) < 0.95
    few = decide(scores(correct), scores(correct), evaluation(380), POLICY)
    assert few.decision == "incomparable" and "380 validation examples cannot show" in few.reason
    # but a clearly worse one (its whole interval below the margin) is rejected on as few
    challenger, champion = vectors(300, 0.98, extra_wrong=30)
    worse = decide(scores(challenger), scores(champion), evaluation(300), POLICY)
    assert worse.decision == "rejected" and "kept the champion" in worse.reason
    # while a clearly better challenger passes on few examples: the error rate holds at any n
    champion = np.arange(100) >= 20  # 80%
    assert decide(scores(np.ones(100, bool)), scores(champion), evaluation(100), POLICY).promote


def test_one_disagreement_in_1000_is_not_a_point_and_not_promoted() -> None:
    # b = 0, c = 1: the challenger wrong on one example the champion gets right
    challenger, champion = vectors(1000, 0.98, extra_wrong=1)
    half_point = PromotionConfig(max_accuracy_drop=0.005)
    decision = decide(scores(challenger), scores(champion), evaluation(1000), half_point)
    assert decision.decision == "rejected" and "reaches below -0.50" in decision.reason
    assert decision.accuracy_difference is not None
    assert decision.accuracy_difference.interval[0] < -0.005


def test_small_losses_cannot_add_up_past_the_margin() -> None:
    # the anchor (first champion of the split), then a champion 0.6 points worse, then a
    # challenger 0.6 points worse again: each step inside the 1-point margin, 1.2 in all
    n = 5000
    anchor = np.arange(n) >= 50  # 99.0%
    champion = anchor.copy()
    champion[50:80] = False  # 98.4%
    challenger = champion.copy()
    challenger[80:110] = False  # 97.8%
    step = decide(scores(challenger), scores(champion), evaluation(n), POLICY)
    assert step.promote  # against the champion alone: inside the margin
    drifted = decide(
        scores(challenger), scores(champion), evaluation(n), POLICY, scores(anchor), "1"
    )
    assert drifted.decision == "rejected" and "drift: accuracy 0.9780 vs 0.9900 of version 1" in (
        drifted.reason
    )
    assert drifted.anchor_difference is not None
    assert drifted.anchor_difference.estimate == pytest.approx(-0.012)
    assert drifted.as_dict()["anchor_version"] == "1"
    assert "drift (challenger - anchor, version 1" in decision_markdown(drifted, "m", "3", "2")


def test_a_challenger_one_point_worse_on_2000_examples_is_always_rejected() -> None:
    challenger, champion = vectors(2000, 0.98, extra_wrong=20)
    for seed in range(5):  # the latency noise differs; the verdict does not
        jitter = 1 + 0.001 * seed
        decision = decide(
            scores(challenger, 0.1 * jitter), scores(champion), evaluation(2000), POLICY
        )
        assert decision.decision == "rejected" and "reaches below -1.00" in decision.reason
        assert decision.accuracy_difference is not None
        assert decision.accuracy_difference.estimate == pytest.approx(-0.01)
        assert decision.accuracy_difference.interval[1] < 0  # clearly worse


def test_a_challenger_within_the_margin_and_a_slower_one() -> None:
    # two errors more on 2,000 (0.1 point): inside the 1-point margin
    challenger, champion = vectors(2000, 0.98, extra_wrong=2)
    assert decide(scores(challenger), scores(champion), evaluation(2000), POLICY).promote
    # as accurate but clearly 1.5x slower than the champion
    slow = decide(scores(champion, 0.15), scores(champion, 0.10), evaluation(2000), POLICY)
    assert slow.decision == "rejected" and "1.50x the champion's" in slow.reason
    assert slow.latency_ratio is not None and slow.latency_ratio.interval[0] > 1.2


def test_first_model_and_incomparable() -> None:
    first = first_model(scores(np.ones(10)), evaluation(10), POLICY)
    assert first.promote and "no champion yet" in first.reason
    off = first_model(scores(np.ones(10)), evaluation(10), PromotionConfig(promote_first=False))
    assert not off.promote and "promote_first is off" in off.reason
    kept = incomparable(scores(np.ones(10)), "7 output classes", evaluation(10, 490), POLICY)
    assert kept.decision == "incomparable" and not kept.promote
    assert kept.reason == "incomparable: champion kept (7 output classes)"
    assert (kept.n_evaluated, kept.n_overlap_removed) == (10, 490)


def test_the_decision_record_has_the_figures_the_checks_read() -> None:
    challenger, champion = vectors(1000, 0.97, extra_wrong=15)
    decision = decide(scores(challenger, 0.11), scores(champion), evaluation(1000, 250), POLICY)
    record = decision.as_dict()
    assert record["decision"] == "rejected" and record["n_evaluated"] == 1000
    assert record["n_overlap_removed"] == 250
    difference = record["accuracy_difference"]
    assert difference["estimate"] == pytest.approx(-0.015) and len(difference["interval"]) == 2
    assert "McNemar" in difference["test"] and 0 < difference["p_value"] < 0.001
    markdown = decision_markdown(decision, "kd-student", "7", "5")
    assert "**REJECTED**" in markdown and "250 removed as images the champion" in markdown
    assert "| challenger (version 7) | 0.9550 [" in markdown
    assert "| champion (version 5) | 0.9700 [" in markdown
    assert "max_accuracy_drop = 0.01" in markdown and "Rule: promote when" in markdown


def _export(tmp_path: Path, name: str, dataset: Dataset, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_model("cnn_tiny", 1, 10).eval()
    return Path(export_onnx(model, dataset, tmp_path / f"{name}.onnx", ExportConfig(), {}).path)


def test_the_evaluation_leaves_out_what_the_champion_trained_on(mnist_dataset: Dataset) -> None:
    images, _ = mnist_dataset.split("val")
    trained_on = example_hashes(np.asarray(images[:120]))  # as if the champion saw these
    chosen = evaluation_set(mnist_dataset, trained_on)
    n = len(images)
    assert (chosen.pool, chosen.overlap_removed, len(chosen.labels)) == (n, 120, n - 120)
    assert np.array_equal(chosen.images, np.asarray(images[120:]))


def test_scores_are_measured_now_each_on_its_own_recipe(
    tmp_path: Path, mnist_dataset: Dataset
) -> None:
    paths = {
        "challenger": _export(tmp_path, "a", mnist_dataset, 0),
        "champion": _export(tmp_path, "b", mnist_dataset, 1),
    }
    chosen = evaluation_set(mnist_dataset)
    policy = PromotionConfig(warmup=2, iterations=20, rounds=4)
    measured = score_models(paths, chosen, mnist_dataset.info, policy)
    for name, path in paths.items():
        inputs = own_inputs(chosen.images, path, mnist_dataset.info)
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path))
        expected = session.run(["logits"], {"input": inputs})[0].argmax(1) == chosen.labels
        assert np.array_equal(measured[name].correct, expected)
        assert len(measured[name].rounds_ms) == 4 and measured[name].p50_ms > 0
    # two different random models really are scored separately
    assert measured["challenger"].accuracy != measured["champion"].accuracy


def test_a_champion_is_fed_its_own_normalisation(tmp_path: Path, mnist_dataset: Dataset) -> None:
    # a champion trained on data with other statistics records them in its metadata
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 1, 10).eval()
    meta = {"normalization_mean": "[0.5]", "normalization_std": "[0.25]"}
    path = Path(export_onnx(model, mnist_dataset, tmp_path / "c.onnx", ExportConfig(), meta).path)
    images = np.asarray(mnist_dataset.split("val")[0][:4])
    expected = (images.astype(np.float32) / 255 - 0.5) / 0.25
    assert np.allclose(own_inputs(images, path, mnist_dataset.info), expected, atol=1e-6)


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
        score_models(
            {"champion": path},
            evaluation_set(mnist_dataset),
            mnist_dataset.info,
            PromotionConfig(iterations=5, rounds=5),
        )
