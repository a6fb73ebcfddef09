from pathlib import Path

import pytest
import torch

from components.config import ArchName, PipelineConfig, load_config
from components.methods import distillation_loss
from components.models import ARCHITECTURES, build_model, count_parameters

REPO = Path(__file__).resolve().parents[2]


def test_registry_matches_the_config_names() -> None:
    assert set(ARCHITECTURES) == set(ArchName.__args__)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 28, 10), (3, 32, 100)])
def test_every_architecture_fits_small_inputs(
    name: str, channels: int, size: int, classes: int
) -> None:
    model = build_model(name, channels, classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


def test_default_student_is_at_least_20x_smaller_than_teacher() -> None:
    config = PipelineConfig()
    teacher = count_parameters(build_model(config.teacher.model.name, 1, 10))
    student = count_parameters(build_model(config.student.model.name, 1, 10))
    assert teacher / student >= 20


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", 1, 10)  # type: ignore[arg-type]


# Published parameter counts for CIFAR-100 (CRD, Tian et al. 2020; DKD, Zhao et al. 2022).
PUBLISHED_MILLIONS = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_2": 2.26,
    "resnet20": 0.28,
    "resnet56": 0.86,
}


@pytest.mark.parametrize(("name", "millions"), sorted(PUBLISHED_MILLIONS.items()))
def test_literature_architectures_match_published_sizes(name: str, millions: float) -> None:
    count = count_parameters(build_model(name, 3, 100)) / 1e6
    assert count == pytest.approx(millions, abs=0.01)


LITERATURE = sorted((REPO / "configs" / "literature").glob("*.yaml"))


@pytest.mark.parametrize("path", LITERATURE, ids=lambda p: p.stem)
def test_literature_config_takes_one_step(path: Path) -> None:
    # given the literature recipe (models, optimizer, loss) on random CIFAR-sized tensors
    config = load_config(path)
    classes = 100 if config.data.name == "CIFAR100" else 10
    teacher = build_model(config.teacher.model.name, 3, classes).eval()
    student = build_model(config.student.model.name, 3, classes)
    train = config.student.train
    assert (train.optimizer, train.epochs, train.milestones) == ("sgd", 240, (150, 180, 210))
    optimizer = torch.optim.SGD(student.parameters(), lr=train.lr, momentum=train.momentum)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, classes, (4,))
    with torch.no_grad():
        teacher_logits = teacher(images)
    before = [p.detach().clone() for p in student.parameters()]
    # when one distillation step is taken
    loss = distillation_loss(student(images), teacher_logits, labels, config.distill, 30.0)
    optimizer.zero_grad()
    loss.total.backward()
    optimizer.step()
    # then the loss is finite and the student moved
    assert torch.isfinite(loss.total) and loss.parts["kd"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "resnet18"])
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 96)])
def test_any_torchvision_classifier_is_a_student(arch: str, channels: int, size: int) -> None:
    model = build_model(f"torchvision:{arch}", channels, 7, size).eval()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    # the stem takes the data's channels, and keeps the resolution of small images
    assert first.in_channels == channels
    assert (first.stride == (1, 1)) == (size < 64)
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_a_native_torchvision_architecture_is_built_as_torchvision_builds_it() -> None:
    model = build_model("torchvision:resnet18", 1, 1000, 28, native=True)
    assert model.conv1.in_channels == 3 and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, torch.nn.MaxPool2d) and model.fc.out_features == 1000
    with pytest.raises(ValueError, match="unknown torchvision architecture"):
        build_model("torchvision:no_such_net", 1, 10)


@pytest.mark.slow
def test_a_torchvision_student_exports_through_the_gates(mnist_dataset, tmp_path: Path) -> None:
    from components.config import ExportConfig
    from components.onnx_export import export_onnx

    torch.manual_seed(0)
    model = build_model("torchvision:mobilenet_v3_small", 1, 10, 28).eval()
    result = export_onnx(model, mnist_dataset, tmp_path / "m.onnx", ExportConfig(int8=False), {})
    assert result.top1_agreement == 1.0 and result.max_abs_diff < 1e-4
