"""torchvision's architecture as torchvision builds it, with a local weights file."""

from pathlib import Path

import torch

from components.checkpoint import load_checkpoint
from components.config import TorchvisionTeacher
from components.io import sha256_file
from components.models import build_model
from components.teacher_sources import source_of
from components.teachers import InputSpec
from tests.components.teacher_sources.conftest import FileRegistry


def test_torchvision_weights_are_built_as_torchvision_builds_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("torchvision:mobilenet_v3_small", 3, 1000, native=True).eval()
    weights = tmp_path / "mobilenet.pt"
    torch.save(model.state_dict(), weights)
    config = TorchvisionTeacher(name="mobilenet_v3_small", weights=weights)
    source = source_of(config)
    spec = InputSpec(3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    brought = source.bring_in(config, spec, tmp_path / "in", FileRegistry({}))
    loaded, _ = load_checkpoint(brought.path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert source.identity(config, FileRegistry({})) == {"sha256": sha256_file(weights)}
    assert source.describe(config, brought) == "torchvision:mobilenet_v3_small"
