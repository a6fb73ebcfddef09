"""The pipeline image's recipe (no Docker engine here to build it): multi-stage, non-root, CPU
PyTorch, `kd` entrypoint, and every other package pinned by the committed lock."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_image_is_multi_stage_non_root_cpu_with_the_kd_entrypoint() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert 'ENTRYPOINT ["kd"]' in text
    assert "download.pytorch.org/whl/cpu" in text
    assert "pip install -c requirements.lock ." in text


def test_lock_pins_every_dependency_exactly() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [
        line
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert all("==" in line for line in lines)
    pinned = {_name(line) for line in lines}
    torch_pinned_in_dockerfile = {"torch", "torchvision"}
    wanted = {_name(r) for r in project["dependencies"]} - torch_pinned_in_dockerfile
    assert wanted <= pinned, wanted - pinned
