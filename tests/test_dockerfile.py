"""The pipeline image's recipe, checked without building it (tests/test_image.py builds and runs
it with podman, out of CI): multi-stage, any uid, CPU PyTorch, `kd` entrypoint, every other
package pinned by the committed lock, every sub-package installed."""

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
    assert "-r requirements.lock" in text and "pip install --no-deps --no-build-isolation ." in text
    # the sources are build arguments, defaulting to the public ones
    for argument in (
        "BASE_IMAGE=python:3.11-slim",
        "PIP_INDEX_URL=",
        "TORCH_INDEX_URL=",
        "WHEELS=",
    ):
        assert f"ARG {argument}" in text, argument
    # any uid: state under /work, telemetry off
    for setting in ("HOME=/work", "PREFECT_HOME=/work/", "MLFLOW_DISABLE_TELEMETRY=true"):
        assert setting in text, setting


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


def test_every_package_of_the_project_is_installed_not_only_the_top_level() -> None:
    # the image installs the project non-editable: a sub-package pyproject's package search
    # misses is missing there (flows.stages once was), while the editable venv hides it
    from setuptools import find_packages

    search = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(find_packages(where=str(REPO), include=search["packages"]["find"]["include"]))
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("components", "flows")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert listed == on_disk
