"""The pipeline image built and run for real with podman: `kd run` on a tiny config inside the
container, as an arbitrary non-root uid with no home directory, against a mounted work dir
that the user created (README's command), with the container's own filesystem read-only: the
handoff bundle it leaves must pass its self-check, and nothing may be written anywhere but the
work dir. Minutes of build and gigabytes of image: out of CI, `make image-test` runs it.

Where no container registry can be reached (this machine), the base image is made from
Debian packages by scripts/debian-base-image.sh; KD_IMAGE_WHEELS names a directory of torch
wheels fetched beforehand (`pip download torch==2.14.1 torchvision==0.29.1 -d DIR`), mounted
into the build in place of PyTorch's index; the other packages come from PyPI. KD_IMAGE_CA names
the CA bundle pip needs behind a TLS-intercepting proxy (this machine's)."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from components.predict import self_check
from tests.conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
TAG = "localhost/kd-pipeline:test"
DEBIAN_BASE = "localhost/kd-debian-base:bookworm"
UID = "12345:12345"  # no such user in the image: any uid must work

pytestmark = pytest.mark.skipif(
    os.environ.get("KD_IMAGE_TEST") != "1" or shutil.which("podman") is None,
    reason="builds the image (minutes, GBs): `make image-test` (needs podman)",
)
# What works with podman here: the runc runtime, the host's network and ulimits.
PODMAN = ["podman", "--runtime", "runc"]


def _podman(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)


def _base_image() -> str:
    """The public base when it can be pulled, else one made from Debian packages."""
    if _podman("pull", "docker.io/library/python:3.11-slim", timeout=120).returncode == 0:
        return "docker.io/library/python:3.11-slim"
    if _podman("image", "exists", DEBIAN_BASE).returncode != 0:
        made = subprocess.run(
            ["bash", str(REPO / "scripts" / "debian-base-image.sh"), DEBIAN_BASE],
            capture_output=True,
            text=True,
        )
        assert made.returncode == 0, made.stderr[-3000:]
    return DEBIAN_BASE


def test_the_image_builds_and_runs_kd_as_any_user_with_state_only_in_the_work_dir(
    tmp_path: Path,
) -> None:
    build = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={_base_image()}"]
    certificates = os.environ.get("KD_IMAGE_CA")
    if certificates:  # a site behind a TLS-intercepting proxy: its CA bundle for pip
        build += ["--volume", f"{Path(certificates).resolve()}:/certs/ca.crt:ro"]
        build += ["--build-arg", "PIP_ARGS=--cert /certs/ca.crt"]
    wheels = os.environ.get("KD_IMAGE_WHEELS")
    if wheels:  # torch's wheels fetched beforehand stand in for its (unreachable) index
        build += ["--volume", f"{Path(wheels).resolve()}:/wheels:ro"]
        build += ["--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple"]
    started = time.monotonic()
    built = _podman(*build, "-t", TAG, str(REPO))
    build_seconds = time.monotonic() - started
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    size = int(_podman("image", "inspect", TAG, "--format", "{{.Size}}").stdout.strip())

    out = tmp_path / "out"
    out.mkdir()  # README: the user makes the work dir, then runs as themselves
    os.chown(out, 12345, 12345)
    overrides = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    run = _podman(
        "run",
        "--rm",
        "--network",
        "host",
        "--ulimit",
        "host",
        "--read-only",  # nothing outside the mounted work dir (and /tmp) may be written
        "--tmpfs",
        "/tmp",
        "-u",
        UID,
        "-v",
        f"{out}:/work",
        TAG,
        "run",
        *overrides,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    bundles = list(out.glob("kd-work/handoff/*/model.onnx"))
    assert len(bundles) == 1
    checked = self_check(bundles[0].parent)
    assert checked.passed, checked.failures
    # every piece of state is in the work dir: the MLflow store, Prefect's, the caches
    assert (out / "mlflow.db").is_file() and (out / "kd-work" / "prefect").is_dir()
    print(
        json.dumps(
            {"image": TAG, "build_seconds": round(build_seconds), "image_bytes": size}, indent=2
        )
    )
