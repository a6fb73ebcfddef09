"""`kd serve` and prefect.yaml against a real Prefect server (the test harness's)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import State
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL
from prefect.workers.process import ProcessWorker

from flows.cli import main
from flows.pipeline import retrain_on_new_data
from tests.conftest import RICH_OVERRIDES, TINY_OVERRIDES
from tests.flows.conftest import Store
from tests.helpers import CACHED, pipeline_runs, process_env, quadrant_images

REPO = Path(__file__).resolve().parents[2]


def _wait_for_deployment(name: str, process: subprocess.Popen, log: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                return client.read_deployment_by_name(name)
            except Exception:  # not registered yet
                time.sleep(0.2)
    raise AssertionError(f"{name} not registered in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.e2e
def test_kd_serve_registers_the_cron_deployment_and_runs_it(
    warm_store: Store, tmp_path: Path
) -> None:
    # The serving process looks for runs to start every second, not every ten.
    env = process_env(warm_store.tracking_uri, PREFECT_RUNNER_POLL_FREQUENCY="1")
    # The warm store's config: the scheduled run reuses its stages.
    overrides = [*RICH_OVERRIDES, f"work_dir={warm_store.work}"]
    command = [sys.executable, "-m", "flows.cli", "serve", "--cron", "0 3 * * *"]
    command += ["--name", "nightly-test", "--timezone", "Europe/Berlin", "--watch", "3600"]
    command += [a for o in overrides for a in ("--set", o)]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        deployment = _wait_for_deployment("kd-retrain/nightly-test", process, log)
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == "0 3 * * *"
        assert schedule.schedule.timezone == "Europe/Berlin" and schedule.active
        assert deployment.parameters["overrides"] == overrides
        assert deployment.parameters["config_path"] is None
        # beside it, the data watch: an interval, the same parameters and its own name
        watch = _wait_for_deployment("kd-retrain-on-data/nightly-test", process, log)
        (every,) = watch.schedules
        assert every.schedule.interval.total_seconds() == 3600 and every.active
        assert watch.parameters == {**deployment.parameters, "watch": "nightly-test"}

        # a run of the deployment is picked up by the serving process and completes
        flow_run = run_deployment("kd-retrain/nightly-test", timeout=600, poll_interval=0.2)
        assert flow_run.state.is_completed(), log.read_text()[-3000:]
        client = warm_store.client
        experiment = client.get_experiment_by_name("kd-pipeline")
        (parent,) = client.search_runs(
            [experiment.experiment_id], f"tags.prefect_flow_run_id = '{flow_run.id}'"
        )
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["reused_stages"] == ",".join(CACHED)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_refuses_a_bad_cron_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--cron", "every night"]) == 2
    assert "every night" in capsys.readouterr().err
    assert main(["serve", "--cron", "0 3 * * *", "--timezone", "Mars/Olympus"]) == 2
    assert main(["serve"]) == 2
    assert "needs --cron EXPR, --watch SECONDS or both" in capsys.readouterr().err
    assert main(["serve", "--watch", "0"]) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_the_data_watch_retrains_only_when_the_data_changed(
    mlflow_store: str, tmp_path: Path
) -> None:
    root = quadrant_images(tmp_path / "images", per_class=30)
    overrides = [
        *TINY_OVERRIDES,
        "data.kind=image_folder",
        f"data.root={root}",
        "data.image_size=8",
        "data.channels=1",
        f"work_dir={tmp_path / 'work'}",
    ]
    client = MlflowClient(mlflow_store)

    def check() -> State:
        return retrain_on_new_data(overrides=overrides, watch="test", return_state=True)

    # the first check finds no record: the pipeline runs, and its data version is recorded
    first = check()
    assert first.is_completed() and first.name != "Unchanged"
    assert len(pipeline_runs(client)) == 1
    record = json.loads((tmp_path / "work" / "watch" / "test.json").read_text())
    assert record["parent_run_id"] == pipeline_runs(client)[0][0].info.run_id
    # the same files: nothing runs, and the state says so
    unchanged = check()
    assert unchanged.name == "Unchanged" and "data unchanged" in (unchanged.message or "")
    assert len(pipeline_runs(client)) == 1
    # new images arrive: the next check retrains
    quadrant_images(root, per_class=5, start=30)
    assert check().name != "Unchanged"
    assert len(pipeline_runs(client)) == 2


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_prefect_yaml_deploys_the_same_flow_to_a_work_pool(tmp_path: Path) -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (deployment_spec,) = spec["deployments"]
    assert deployment_spec["entrypoint"] == "flows/pipeline.py:retrain"
    assert (REPO / deployment_spec["parameters"]["config_path"]).is_file()

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PWD": str(REPO)}
    pool = deployment_spec["work_pool"]["name"]
    # the pool, as `prefect work-pool create POOL --type process` makes it (in this process:
    # a CLI process would import Prefect again for what is not under test here)
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            ),
            overwrite=True,
        )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "--no-prompt",
            "deploy",
            "--name",
            deployment_spec["name"],
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"kd-retrain/{deployment_spec['name']}")
    assert deployment.entrypoint == "flows/pipeline.py:retrain"
    assert deployment.work_pool_name == pool
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    assert deployment.parameters["config_path"] == "configs/default.yaml"
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]


@pytest.mark.usefixtures("prefect_server")
def test_a_refused_model_ends_the_flow_run_in_a_state_named_refused() -> None:
    from prefect import flow

    from flows.pipeline import PipelineResult, finished

    def result(refused: str | None) -> PipelineResult:
        return PipelineResult("run", "uri", "ui", "work", {}, {}, "", [], refused)

    @flow(name="kd-refusal-check")
    def pipeline(refused: str | None) -> PipelineResult:
        return finished(result(refused))

    state = pipeline("not promoted (rejected): worse", return_state=True)
    assert state.name == "Refused" and state.is_completed()
    assert state.message == "model refused: not promoted (rejected): worse"
    assert pipeline("not promoted (rejected): worse") == result("not promoted (rejected): worse")
    assert pipeline(None, return_state=True).name == "Completed"
