import numpy as np
import pytest
import torch

from components.config import DistillConfig, TrainConfig
from components.data import Dataset
from components.models import build_model
from components.training import (
    evaluate,
    predict_logits,
    resolve_device,
    seed_everything,
    train_classifier,
)

CPU = torch.device("cpu")


def test_training_learns_and_reports_every_epoch(mnist_dataset: Dataset) -> None:
    seed_everything(0)
    model = build_model("cnn_tiny", 1, 10)
    before = evaluate(model, mnist_dataset, "val", CPU)["val_accuracy"]
    seen: list[int] = []
    result = train_classifier(
        model,
        mnist_dataset,
        TrainConfig(epochs=2, batch_size=128),
        seed=0,
        device=CPU,
        on_epoch=lambda epoch, metrics: seen.append(epoch),
    )
    assert seen == [1, 2] and len(result.history) == 2
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"} <= set(
        result.history[0]
    )
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert result.final["test_accuracy"] > max(0.4, before + 0.25)  # chance is 0.1


def test_training_is_deterministic_in_the_seed(mnist_dataset: Dataset) -> None:
    def weights(seed: int) -> torch.Tensor:
        seed_everything(seed)
        model = build_model("cnn_tiny", 1, 10)
        train_classifier(
            model, mnist_dataset, TrainConfig(epochs=1, batch_size=256), seed=seed, device=CPU
        )
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(weights(1), weights(1))
    assert not torch.equal(weights(1), weights(2))


def test_distillation_follows_the_cached_teacher(mnist_dataset: Dataset) -> None:
    # given "teacher logits" that always name class 3, and alpha = 1 (no label term)
    rows = len(mnist_dataset.splits["train"])
    logits = np.full((rows, 10), -5.0, np.float16)
    logits[:, 3] = 5.0
    seed_everything(0)
    model = build_model("cnn_tiny", 1, 10)
    train_classifier(
        model,
        mnist_dataset,
        TrainConfig(epochs=1, batch_size=256),
        seed=0,
        device=CPU,
        teacher_logits=logits,
        distill=DistillConfig(temperature=1.0, alpha=1.0),
    )
    images, _ = mnist_dataset.split("test")
    predictions = predict_logits(model, images, mnist_dataset, CPU).argmax(1)
    assert (predictions == 3).float().mean() > 0.95


def test_cache_rows_must_match_the_training_split(mnist_dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="does not belong to this dataset"):
        train_classifier(
            build_model("cnn_tiny", 1, 10),
            mnist_dataset,
            TrainConfig(epochs=1),
            seed=0,
            device=CPU,
            teacher_logits=np.zeros((7, 10), np.float16),
            distill=DistillConfig(),
        )


def test_device_resolution() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")
