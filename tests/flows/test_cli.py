import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.config import PipelineConfig, load_config
from flows.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_default_yaml_is_the_builtin_default() -> None:
    assert load_config(REPO / "configs" / "default.yaml") == PipelineConfig()


def test_schema_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "PipelineConfig" and "teacher" in schema["properties"]


def test_config_prints_the_resolved_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "distill.alpha=0.3"]) == 0
    assert "alpha: 0.3" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--set", "teacher.train.lr=-1"], "teacher.train.lr"),
        (["--set", "distill.temperature=0"], "distill.temperature"),
        (["--set", "student.model.name=vgg"], "student.model.name"),
        (["--set", "nonsense=1"], "nonsense"),
        (["--config", "does-not-exist.yaml"], "does-not-exist.yaml"),
    ],
)
def test_invalid_config_stops_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    field: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no work dir, no MLflow store


def test_console_script_help_documents_config() -> None:
    kd = Path(sys.executable).parent / "kd"
    out = subprocess.run(
        [str(kd), "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--config" in out and "--set" in out and "kd schema" in out


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    load_config(path)
