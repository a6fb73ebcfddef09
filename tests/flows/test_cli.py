import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from components.config import PipelineConfig, load_config
from flows.cli import disk_full, main

REPO = Path(__file__).resolve().parents[2]


def test_default_yaml_is_the_builtin_default() -> None:
    assert load_config(REPO / "configs" / "default.yaml") == PipelineConfig()


def test_schema_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "PipelineConfig" and "teacher" in schema["properties"]


def test_config_prints_the_resolved_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "distill.kd_weight=3.5"]) == 0
    assert "kd_weight: 3.5" in capsys.readouterr().out


def _image_folder(root: Path, readable: bool) -> Path:
    (root / "cat").mkdir(parents=True)
    for i in range(3):
        path = root / "cat" / f"{i}.png"
        if readable:
            Image.new("RGB", (8, 8)).save(path)
        else:
            path.write_bytes(b"this is not a png")
    return root


def _yaml(tmp: Path, text: str) -> Path:
    path = tmp / "bad.yaml"
    path.write_text(text)
    return path


# Each case: the arguments after `kd run`, built in a temp dir, and what the message names.
BAD_INPUTS = {
    "unknown key": (lambda t: ["--set", "nonsense=1"], "nonsense"),
    "unknown nested key": (lambda t: ["--set", "teacher.train.lrr=0.1"], "teacher.train.lrr"),
    "wrong type": (lambda t: ["--set", "teacher.train.epochs=ten"], "teacher.train.epochs"),
    "negative learning rate": (lambda t: ["--set", "teacher.train.lr=-1"], "teacher.train.lr"),
    "zero learning rate": (lambda t: ["--set", "student.train.lr=0"], "student.train.lr"),
    "zero epochs": (lambda t: ["--set", "student.train.epochs=0"], "student.train.epochs"),
    "negative batch size": (lambda t: ["--set", "teacher.train.batch_size=-8"], "batch_size"),
    "zero temperature": (
        lambda t: ["--set", "distill.kind=dkd", "--set", "distill.temperature=0"],
        "distill.temperature",
    ),
    "negative power": (lambda t: ["--set", "distill.power=-2"], "distill.power"),
    "alpha above 1": (
        lambda t: ["--set", "distill.kind=hinton", "--set", "distill.alpha=1.5"],
        "distill.alpha",
    ),
    "alpha below 0": (
        lambda t: ["--set", "distill.kind=hinton", "--set", "distill.alpha=-0.1"],
        "distill.alpha",
    ),
    "unknown model": (lambda t: ["--set", "student.model.name=vgg"], "student.model.name"),
    "unknown dataset name": (
        lambda t: [
            "--set",
            "data.kind=torchvision",
            "--set",
            "data.name=SVHN",
            "--set",
            "data.root=x",
        ],
        "data.name",
    ),
    "unknown data kind": (lambda t: ["--set", "data.kind=imagenet"], "data"),
    "student architecture that cannot take the images": (
        lambda t: ["--set", "student.model.name=torchvision:vgg11"],
        "torchvision:vgg11 does not take 1x28x28 images",
    ),
    "unknown torchvision architecture": (
        lambda t: ["--set", "student.model.name=torchvision:no_such_net"],
        "unknown torchvision architecture",
    ),
    "input recipe for a teacher trained here": (
        lambda t: ["--set", "teacher.input.image_size=64"],
        "teacher.input",
    ),
    "views without augmentation": (
        lambda t: ["--set", "student.train.augment.enabled=false"],
        "cache.views",
    ),
    "two-view method without strong views": (
        lambda t: ["--set", "distill.kind=mlkd"],
        "student.train.augment.strong",
    ),
    "strong views for a one-view method": (
        lambda t: ["--set", "student.train.augment.strong={}"],
        "two-view methods only",
    ),
    "strong views over mixed images": (
        lambda t: [
            "--set",
            "distill.kind=mlkd",
            "--set",
            "student.train.augment.strong={}",
            "--set",
            "student.train.augment.mixup_alpha=0.2",
        ],
        "mixup_alpha=0",
    ),
    "logit standardisation where its authors do not define it": (
        lambda t: ["--set", "distill.kind=dist", "--set", "distill.standardize=true"],
        "distill.standardize",
    ),
    "a list of control candidates (the control is one recipe now)": (
        lambda t: ["--set", "student.baseline.views=[cached, fresh]"],
        "kd choose-control",
    ),
    "malformed --set": (lambda t: ["--set", "no-equals-sign"], "no-equals-sign"),
    "malformed YAML": (lambda t: ["--config", str(_yaml(t, "teacher: [oops"))], "malformed YAML"),
    "YAML that is not a mapping": (lambda t: ["--config", str(_yaml(t, "- 1\n- 2\n"))], "mapping"),
    "missing config file": (lambda t: ["--config", str(t / "nope.yaml")], "nope.yaml"),
    "missing data directory": (
        lambda t: ["--set", "data.kind=image_folder", "--set", f"data.root={t / 'absent'}"],
        "absent",
    ),
    "empty data directory": (
        lambda t: ["--set", "data.kind=image_folder", "--set", f"data.root={t}"],
        "no class sub-directories",
    ),
    "torchvision files missing": (
        lambda t: [
            "--set",
            "data.kind=torchvision",
            "--set",
            "data.name=MNIST",
            "--set",
            f"data.root={t}",
        ],
        "download",
    ),
    "unwritable work directory": (
        lambda t: ["--set", f"work_dir={_yaml(t, 'a: 1') / 'under-a-file'}"],
        "not writable",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_stops_before_any_work_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    build, named = BAD_INPUTS[case]
    data = tmp_path / "inputs"
    data.mkdir()
    args = build(data)
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.iterdir())
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # one clear message, not a dump
    assert set(tmp_path.iterdir()) == before  # no work dir, no MLflow store, nothing written


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_unreadable_images_refused_as_configured(
    tmp_path: Path, mlflow_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # every image unreadable and on_bad_image=error: found when the data is read, exit 2
    root = _image_folder(tmp_path / "images", readable=False)
    args = ["run", "--set", "data.kind=image_folder", "--set", f"data.root={root}"]
    args += ["--set", "data.on_bad_image=error", "--set", f"work_dir={tmp_path / 'work'}"]
    assert main(args) == 2
    # kd's own last word is one line naming the file (Prefect's task log above it may
    # carry the task's traceback)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("kd: unreadable image") and "0.png" in last
    runs = MlflowClient(mlflow_store).search_runs(
        [MlflowClient(mlflow_store).get_experiment_by_name("kd-pipeline").experiment_id]
    )
    assert runs and all(r.info.status == "FAILED" for r in runs)  # none left RUNNING


def test_console_script_help_documents_config() -> None:
    kd = Path(sys.executable).parent / "kd"
    out = subprocess.run(
        [str(kd), "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--config" in out and "--set" in out and "kd schema" in out


def test_the_kd_command_exits_with_its_output_whole_its_code_and_its_exit_handlers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # kd skips the interpreter's teardown at its exit (flows.cli.command): its output, into a
    # pipe (buffered), is all there
    assert main(["config"]) == 0
    expected = capsys.readouterr().out
    kd = Path(sys.executable).parent / "kd"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([str(kd), "config"], capture_output=True, text=True, env=buffered)
    assert done.returncode == 0 and done.stdout == expected
    # and what was registered to run at exit still runs, after kd's own last words
    code = (
        "import atexit, sys; from flows import cli; "
        "atexit.register(print, 'exit handler ran', file=sys.stderr); "
        "sys.argv[1:] = ['run', '--set', 'nonsense=1']; cli.command()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=buffered
    )
    assert done.returncode == 2
    assert "nonsense" in done.stderr and done.stderr.rstrip().endswith("exit handler ran")


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    load_config(path)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--force-stage", "no-such-stage"],
        ["compare", "--last", "0"],
        ["serve"],  # --cron is required
    ],
)
def test_bad_command_line_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    assert code == 2
    assert capsys.readouterr().err


@pytest.mark.parametrize("variable", ["MLFLOW_TRACKING_URI", "PREFECT_API_URL"])
def test_unreachable_server_fails_fast_naming_it(
    variable: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.servers import free_port

    url = f"http://127.0.0.1:{free_port()}" + ("/api" if variable == "PREFECT_API_URL" else "")
    monkeypatch.setenv(variable, url)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--set", f"work_dir={tmp_path / 'work'}"]) == 2
    err = capsys.readouterr().err
    assert url in err and variable in err
    assert "Traceback" not in err
    # refused before any work: nothing trained, no MLflow store created
    assert not (tmp_path / "work" / "teacher").exists() and not (tmp_path / "mlflow.db").exists()


def _raised(write: Callable[[], object]) -> BaseException:
    try:
        write()
    except BaseException as err:  # whatever the writer raises is the subject
        return err
    raise AssertionError("the write did not fail")


def test_a_refused_write_is_told_as_a_full_disk() -> None:
    # real writes to /dev/full (every write: ENOSPC), as each library reports them
    plain = _raised(lambda: Path("/dev/full").write_bytes(b"x" * 100_000))
    short = _raised(lambda: np.zeros(100_000).tofile("/dev/full"))  # numpy: no errno
    assert isinstance(short, OSError) and short.errno is None
    for err in (plain, short):
        assert disk_full(err), err
        try:  # and as the cause of what a stage raised
            raise RuntimeError("export failed") from err
        except RuntimeError as wrapped:
            assert disk_full(wrapped)
    assert not disk_full(OSError("[Errno 2] No such file or directory"))
    assert not disk_full(ValueError("3 requested and 3 written, fine"))


@pytest.mark.parametrize("teacher", ["trained here", "an ONNX file"])
def test_the_checks_alone_write_nothing_and_load_neither_prefect_nor_mlflow(
    tmp_path: Path, teacher: str
) -> None:
    # `kd run --check` on the default config, as a fresh process: every pre-flight check
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = ["run", "--check"]
    if teacher == "an ONNX file":
        import torch

        from components.models import build_model

        model = build_model("cnn_tiny", 1, 10).eval()
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(inputs / "t.onnx"))
        args += ["--set", f"teacher.source={{kind: onnx, path: {inputs / 't.onnx'}}}"]
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'store' / 'mlflow.db'}"}
    env.pop("PREFECT_API_URL", None)
    probe = (
        f"import sys; from flows.cli import main; code = main({args!r}); "
        "print(sorted(m for m in ('prefect', 'mlflow') if m in sys.modules)); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "every pre-flight check passed" in done.stdout and "[]" in done.stdout
    # nothing created: no work dir, no MLflow store, no Prefect database, no file at all
    assert sorted(work.rglob("*")) == []
