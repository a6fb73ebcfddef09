import pytest
import torch

from components.config import (
    AugmentConfig,
    CacheConfig,
    DISTDistill,
    HintonDistill,
    MLKDDistill,
    StrongAugment,
    TrainConfig,
    WTTMDistill,
)
from components.data import Dataset
from components.devices import resolve_device
from components.inference import predict_logits
from components.logit_cache import CacheSpec, build_logit_cache, open_logit_cache
from components.models import build_model
from components.training import evaluate, seed_everything, train_classifier

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
        view_seed=0,
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
            model,
            mnist_dataset,
            TrainConfig(epochs=1, batch_size=256, augment=AugmentConfig(enabled=True)),
            seed=seed,
            device=CPU,
            view_seed=seed,
        )
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(weights(1), weights(1))
    assert not torch.equal(weights(1), weights(2))


class ConstantTeacher(torch.nn.Module):
    """A "teacher" that always names class 3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(x), 10), -5.0)
        out[:, 3] = 5.0
        return out


def cache_of(teacher: torch.nn.Module, dataset: Dataset, root, augment: AugmentConfig, views: int):
    spec = CacheSpec.create(
        "t" * 64, dataset.info.fingerprint, augment, 0, CacheConfig(views=views)
    )
    info = build_logit_cache(teacher, spec, dataset, root, 1000, CPU)
    return open_logit_cache(root / info.key)


def test_distillation_follows_the_cached_teacher(mnist_dataset: Dataset, tmp_path) -> None:
    # given cached logits that always name class 3, and alpha = 1 (no label term)
    augment = AugmentConfig(enabled=True)
    cache = cache_of(ConstantTeacher(), mnist_dataset, tmp_path, augment, views=2)
    seed_everything(0)
    model = build_model("cnn_tiny", 1, 10)
    train_classifier(
        model,
        mnist_dataset,
        TrainConfig(epochs=1, batch_size=256, augment=augment),
        seed=0,
        device=CPU,
        view_seed=0,
        view_pool=2,
        teacher_cache=cache,
        distill=HintonDistill(temperature=1.0, alpha=1.0),
    )
    images, _ = mnist_dataset.split("test")
    predictions = predict_logits(model, images, mnist_dataset, CPU).argmax(1)
    assert (predictions == 3).float().mean() > 0.95


TWO_VIEW = AugmentConfig(enabled=True, strong=StrongAugment())


@pytest.mark.parametrize(
    ("distill", "augment"),
    [
        (DISTDistill(temperature=1.0, ce_weight=0.0), AugmentConfig(enabled=True)),
        (WTTMDistill(power=0.5, ce_weight=0.0), AugmentConfig(enabled=True)),
        (MLKDDistill(temperatures=(1.0, 2.0), ce_weight=0.0), TWO_VIEW),
    ],
    ids=["dist", "wttm", "mlkd-two-view"],
)
def test_every_method_learns_the_cached_teacher_alone(
    mnist_dataset: Dataset, tmp_path, distill: object, augment: AugmentConfig
) -> None:
    # Only the cache is given: the teacher module is gone before the student trains.
    cache = cache_of(ConstantTeacher(), mnist_dataset, tmp_path, augment, views=2)
    seed_everything(0)
    model = build_model("cnn_tiny", 1, 10)
    result = train_classifier(
        model,
        mnist_dataset,
        TrainConfig(epochs=1, batch_size=256, augment=augment),
        seed=0,
        device=CPU,
        view_seed=0,
        view_pool=2,
        teacher_cache=cache,
        distill=distill,  # type: ignore[arg-type]
    )
    images, _ = mnist_dataset.split("test")
    predictions = predict_logits(model, images, mnist_dataset, CPU).argmax(1)
    assert (predictions == 3).float().mean() > 0.95
    parts = {k for k in result.history[0] if k.startswith("train_") and k.endswith("_loss")}
    assert "train_kd_loss" in parts
    if augment.strong is not None:
        assert {"train_instance_loss", "train_batch_loss", "train_class_loss"} <= parts


@pytest.mark.parametrize(
    ("augment", "view_seed", "view_pool", "problem"),
    [
        (AugmentConfig(enabled=True, crop_padding=3), 0, 2, "augmentation"),
        (AugmentConfig(enabled=True), 1, 2, "views from seed"),
        (AugmentConfig(enabled=True), 0, 4, "views from seed"),
    ],
)
def test_student_must_see_the_cached_views(
    mnist_dataset: Dataset,
    tmp_path,
    augment: AugmentConfig,
    view_seed: int,
    view_pool: int,
    problem: str,
) -> None:
    cache = cache_of(
        ConstantTeacher(), mnist_dataset, tmp_path, AugmentConfig(enabled=True), views=2
    )
    with pytest.raises(ValueError, match=problem):
        train_classifier(
            build_model("cnn_tiny", 1, 10),
            mnist_dataset,
            TrainConfig(epochs=1, augment=augment),
            seed=0,
            device=CPU,
            view_seed=view_seed,
            view_pool=view_pool,
            teacher_cache=cache,
            distill=HintonDistill(),
        )


def test_device_resolution() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


def test_learning_rate_schedules() -> None:
    from components.training import _lr_at

    multistep = TrainConfig(epochs=10, lr=0.05, schedule="multistep", milestones=(3, 6), gamma=0.1)
    # 10 steps per epoch: epochs 0-2 at lr, 3-5 at lr/10, 6+ at lr/100
    assert [_lr_at(s, 10, multistep) for s in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005]
    )
    onecycle = TrainConfig(epochs=10, lr=1.0)
    rates = [_lr_at(s, 10, onecycle) for s in range(100)]
    assert max(rates) == pytest.approx(1.0, abs=0.02) and rates.index(max(rates)) == 30
    assert rates[0] < 0.1 and rates[-1] < 0.01
    assert _lr_at(55, 10, TrainConfig(epochs=10, lr=0.3, schedule="constant")) == 0.3


def test_sgd_with_dkd_from_cache_trains(mnist_dataset: Dataset, tmp_path) -> None:
    from components.config import DKDDistill

    augment = AugmentConfig(enabled=True, mixup_alpha=0.5)
    cache = cache_of(ConstantTeacher(), mnist_dataset, tmp_path, augment, views=2)
    seed_everything(0)
    model = build_model("cnn_tiny", 1, 10)
    result = train_classifier(
        model,
        mnist_dataset,
        TrainConfig(epochs=2, batch_size=256, optimizer="sgd", lr=0.1, augment=augment),
        seed=0,
        device=CPU,
        view_seed=0,
        view_pool=2,
        teacher_cache=cache,
        distill=DKDDistill(warmup_epochs=1),
    )
    parts = result.history[-1]
    assert {"train_tckd_loss", "train_nckd_loss", "train_ce_loss"} <= set(parts)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())


def test_interrupted_training_resumes_to_the_uninterrupted_result(
    mnist_dataset: Dataset, tmp_path
) -> None:
    train = TrainConfig(epochs=3, batch_size=256)  # augmentation on: views use the seed too

    def fit(state_path, on_epoch=None):
        seed_everything(0)
        model = build_model("cnn_tiny", 1, 10)
        result = train_classifier(
            model, mnist_dataset, train, seed=0, device=CPU, view_seed=5,
            on_epoch=on_epoch, state_path=state_path,
        )  # fmt: skip
        return model, result

    whole_model, whole = fit(tmp_path / "whole.pt")

    def die_in_epoch_2(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt  # after epoch 2's step, before its state is written

    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "state.pt", die_in_epoch_2)
    seen: list[int] = []
    resumed_model, resumed = fit(tmp_path / "state.pt", lambda e, m: seen.append(e))
    assert resumed.resumed_from_epoch == 1
    assert seen == [1, 2, 3]  # the restored epoch is reported again, then the rest
    for (name, a), b in zip(
        whole_model.state_dict().items(), resumed_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name  # the same weights, bit for bit
    assert resumed.final == whole.final
    drop_time = [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in whole.history]
    assert [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in resumed.history] == (
        drop_time
    )


def test_a_corrupt_training_state_is_refused_naming_the_file(
    mnist_dataset: Dataset, tmp_path
) -> None:
    state = tmp_path / "state.pt"
    state.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=str(state)):
        train_classifier(
            build_model("cnn_tiny", 1, 10), mnist_dataset, TrainConfig(epochs=1),
            seed=0, device=CPU, view_seed=0, state_path=state,
        )  # fmt: skip
