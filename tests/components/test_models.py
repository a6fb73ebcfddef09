import pytest
import torch

from components.config import ArchName, PipelineConfig
from components.models import ARCHITECTURES, build_model, count_parameters


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
