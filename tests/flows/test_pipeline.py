"""The real flow, end to end, on a tiny config: a real Prefect server (test harness) and a real
MLflow SQLite store in a temp dir; nothing mocked."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow.artifacts
import numpy as np
import onnx
import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from components.benchmark import cores
from components.checkpoint import load_checkpoint
from components.config import PipelineConfig
from components.data import load_dataset
from components.logit_cache import CacheSpec, build_logit_cache, open_logit_cache
from flows.cli import main
from tests.conftest import TINY_OVERRIDES

STAGES = [
    "teacher",
    "logit-cache",
    "student-baseline",
    "student-kd",
    "onnx-export",
    "benchmark",
    "handoff",
    "promotion",
]
CACHED = STAGES[:6]


def flow_run_log(parent: Run) -> str:
    """What the pipeline run logged to Prefect (the messages the UI shows), read back from the
    server: the console may be someone else's captured stream by now."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    flow_run_id = parent.data.tags["prefect_flow_run_id"]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(log.message for log in logs)


def tiny_run_args(work: Path, *overrides: str) -> list[str]:
    pairs = [*TINY_OVERRIDES, f"work_dir={work}", *overrides]
    return ["run"] + [a for o in pairs for a in ("--set", o)]


def pipeline_runs(client: MlflowClient) -> list:
    """Parent runs, oldest first, each with its children by name."""
    experiment = client.get_experiment_by_name(PipelineConfig().experiment_name)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return [
        (
            parent,
            {
                r.info.run_name: r
                for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
            },
        )
        for parent in parents
    ]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.usefixtures("prefect_server")
def test_kd_run_end_to_end(
    mlflow_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # when the pipeline runs through the CLI on a tiny config
    work = tmp_path / "work"
    args = (
        ["run"] + [a for o in TINY_OVERRIDES for a in ("--set", o)] + ["--set", f"work_dir={work}"]
    )
    assert main(args) == 0
    out = capsys.readouterr().out

    # then the summary and where to look are printed
    for row in ("| teacher |", "| student-baseline |", "| student-kd |", "| student-kd-onnx |"):
        assert row in out
    assert f"mlflow ui --backend-store-uri {mlflow_store}" in out

    # and MLflow holds one finished parent run with the six named child runs
    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name(PipelineConfig().experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id in out
    assert parent.info.status == "FINISHED"
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in children.values())

    # the whole resolved config: flattened params and config.yaml on the parent
    assert parent.data.params["teacher.train.epochs"] == "1"
    assert parent.data.params["distill.temperature"] == "4.0"
    assert parent.data.params["work_dir"] == str(work)
    assert "config.yaml" in artifact_paths(client, parent.info.run_id)
    assert parent.data.tags["dataset_fingerprint"] == parent.data.params["dataset.fingerprint"]

    # every child run has params, metrics and artifacts
    for name, run in children.items():
        assert run.data.params, name
        assert run.data.metrics, name
        assert artifact_paths(client, run.info.run_id), name
    for role in ("teacher", "student-baseline", "student-kd"):
        run = children[role]
        assert "train.epochs" in run.data.params and "model.parameters" in run.data.params
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1]  # per-epoch metrics, step = epoch
        assert 0 <= run.data.metrics["test_accuracy"] <= 1
        assert "checkpoint/model.pt" in artifact_paths(client, run.info.run_id)
    assert children["student-kd"].data.params["distill.kind"] == "dkd"
    assert "distill.kind" not in children["student-baseline"].data.params
    assert children["student-baseline"].data.params["cache.views"] == "2"

    # a valid cache manifest that belongs to this teacher and data
    cache = children["logit-cache"]
    assert "manifest.json" in artifact_paths(client, cache.info.run_id)
    cache_dir = work / "cache" / cache.data.tags["cache_key"]
    cache_files = open_logit_cache(cache_dir, expected_key=cache.data.tags["cache_key"])
    spec = cache_files.manifest["spec"]
    assert spec["teacher_sha256"] == children["teacher"].data.tags["checkpoint_sha256"]
    assert spec["dataset_fingerprint"] == parent.data.params["dataset.fingerprint"]
    assert cache_files.arrays["logits"].shape == (4000, 2, 10)
    assert cache_files.arrays["logits"].dtype == np.float16
    assert cache.data.metrics["bytes_per_sample_view"] == 20
    assert children["student-kd"].data.params["cache.key"] == cache.data.tags["cache_key"]

    # ONNX parity, metadata and the artifact
    export = children["onnx-export"]
    assert export.data.metrics["max_abs_diff"] <= 1e-4
    assert export.data.metrics["top1_agreement"] >= 0.999
    assert {"onnx/model.onnx", "parity.json"} <= artifact_paths(client, export.info.run_id)
    onnx_files = list((work / "onnx").glob("*/model.onnx"))
    assert len(onnx_files) == 1
    meta = {p.key: p.value for p in onnx.load(str(onnx_files[0])).metadata_props}
    assert meta["student_run_id"] == children["student-kd"].info.run_id
    assert meta["teacher_run_id"] == children["teacher"].info.run_id
    assert json.loads(meta["class_labels"]) == [str(d) for d in range(10)]

    # benchmark: both runtimes at batch 1 and 32, JSON and markdown
    bench = children["benchmark"]
    assert {"benchmark.json", "benchmark.md"} <= artifact_paths(client, bench.info.run_id)
    assert "latency.png" in artifact_paths(client, bench.info.run_id)
    for threads in sorted({1, cores()}):
        for key in (
            f"student-kd.pytorch.threads{threads}.batch1.p50_ms",
            f"student-kd-onnx.onnxruntime.threads{threads}.batch64.p99_ms",
        ):
            assert bench.data.metrics[key] > 0
    assert bench.data.metrics["speedup_ort_fp32_vs_torch_b1"] > 0

    # the handoff bundle, and the registered model behind the alias gives the bundle's answers
    handoff = children["handoff"]
    bundle = work / "handoff" / parent.info.run_id
    names = {p.name for p in bundle.iterdir()}
    required = {"model.onnx", "labels.json", "preprocessing.json", "parity.json", "benchmark.json"}
    assert required | {"MODEL_CARD.md"} <= names
    assert ("model.int8.onnx" in names) == handoff.data.tags["int8"].startswith("kept")
    card = (bundle / "MODEL_CARD.md").read_text()
    for heading in ("## Data", "## Accuracy", "## Latency", "## Intended input", "## Limits"):
        assert heading in card
    assert {f"handoff/{n}" for n in names} <= artifact_paths(client, handoff.info.run_id)
    version = client.get_model_version_by_alias("kd-student", "challenger")
    assert version.run_id == handoff.info.run_id
    assert str(version.version) == handoff.data.tags["model_version"]
    assert version.tags["onnx_sha256"] == export.data.tags["onnx_sha256"]
    assert {"opset", "parity_max_abs_diff", "test_accuracy"} <= set(version.tags)
    import mlflow.pyfunc
    import onnxruntime

    pyfunc = mlflow.pyfunc.load_model("models:/kd-student@challenger")
    test_input = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    via_registry = pyfunc.predict(test_input)
    via_registry = np.asarray(
        via_registry["logits"] if isinstance(via_registry, dict) else via_registry
    )
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"))
    via_bundle = session.run(["logits"], {"input": test_input})[0]
    assert np.allclose(via_registry, via_bundle, atol=1e-6)

    # the metadata travels inside the model
    for key in (
        "input_shape",
        "normalization_mean",
        "dataset_fingerprint",
        "versions",
        "git_commit",
    ):
        assert meta[key]
    assert float(meta["parity_max_abs_diff"]) <= 1e-4 and meta["exporter"] in {
        "dynamo",
        "torchscript",
    }

    # the standalone inference benchmark finds this run's student and measures it
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "onnx_runtime.py"
    out = tmp_path / "bench"
    cmd = [sys.executable, str(script), "--out", str(out), "--work-dir", str(work)]
    subprocess.run([*cmd, "--iterations", "5", "--warmup", "1"], check=True, capture_output=True)
    standalone = json.loads((out / "onnx_runtime.json").read_text())
    assert standalone["speedup_ort_fp32_vs_torch_b1"] > 0 and (out / "latency.png").is_file()

    # nothing half-written anywhere under the work directory
    assert not [p for p in work.rglob(".*tmp-*")]


@pytest.mark.usefixtures("prefect_server")
def test_rerun_with_unchanged_inputs_reuses_every_cached_stage(
    mlflow_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    assert main(tiny_run_args(work)) == 0
    capsys.readouterr()
    assert main(tiny_run_args(work)) == 0
    out = capsys.readouterr().out
    (_, first_children), (second, second_children) = pipeline_runs(MlflowClient(mlflow_store))

    # every expensive stage of the rerun is a reused record naming the run that did the work
    assert second.data.tags["reused_stages"] == ",".join(CACHED)
    assert second.data.tags["computed_stages"] == "none"
    for stage in CACHED:
        run = second_children[stage]
        assert run.data.tags["reused"] == "true", stage
        assert run.data.tags["reused_from_run_id"] == first_children[stage].info.run_id
        assert run.data.tags["prefect_cache_key"].endswith(
            first_children[stage].data.params.get("stage.fingerprint", "")
        )
        assert run.info.status == "FINISHED"
        # the figures travel with it, so the run compares like any other
        assert run.data.metrics == first_children[stage].data.metrics
        assert first_children[stage].data.tags.get("reused", "false") == "false"
    assert f"Reused stages: teacher (from run {first_children['teacher'].info.run_id})" in out
    teacher_line = "teacher: inputs unchanged (Prefect cache train-teacher-"
    assert teacher_line in flow_run_log(second)
    # handoff and promotion are new every run
    assert second_children["handoff"].data.tags["model_version"] == "2"
    assert "reused" not in second_children["promotion"].data.tags


@pytest.mark.usefixtures("prefect_server")
def test_changing_the_student_retrains_only_the_students(mlflow_store: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert main(tiny_run_args(work)) == 0
    assert main(tiny_run_args(work, "student.train.lr=0.001")) == 0
    (_, first), (parent, second) = pipeline_runs(MlflowClient(mlflow_store))
    assert parent.data.tags["reused_stages"] == "teacher,logit-cache"
    for stage in ("teacher", "logit-cache"):
        assert second[stage].data.tags["reused_from_run_id"] == first[stage].info.run_id
    for stage in ("student-baseline", "student-kd", "onnx-export", "benchmark"):
        assert "reused" not in second[stage].data.tags, stage
    assert second["student-kd"].data.params["train.lr"] == "0.001"
    assert second["student-kd"].data.params["cache.run_id"] == first["logit-cache"].info.run_id


@pytest.mark.usefixtures("prefect_server")
def test_force_recomputes_and_damaged_results_are_not_reused(
    mlflow_store: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    assert main(tiny_run_args(work)) == 0
    # --force-stage teacher: retrained; the same weights give the same cache key: reused
    assert main([*tiny_run_args(work), "--force-stage", "teacher"]) == 0
    # a checkpoint gone from disk is never trusted from the cache record
    (checkpoint,) = (work / "models" / "student-baseline").glob("*/model.pt")
    checkpoint.unlink()
    assert main(tiny_run_args(work)) == 0
    # --force: everything again
    assert main([*tiny_run_args(work), "--force"]) == 0
    runs = pipeline_runs(MlflowClient(mlflow_store))
    reused = [parent.data.tags["reused_stages"] for parent, _ in runs]
    assert reused[1] == ",".join(s for s in CACHED if s != "teacher")
    assert reused[2] == ",".join(s for s in CACHED if s != "student-baseline")
    assert reused[3] == "none"
    assert checkpoint.is_file()  # retrained in place
    logged = flow_run_log(runs[2][0])
    assert "the cached result cannot be used" in logged and str(checkpoint) in logged
    # a forced logit cache is rebuilt on disk, not just re-verified
    assert runs[3][1]["logit-cache"].data.tags["cache_hit"] == "false"
    # the teacher was deterministic: same weights, same logit cache key every time
    keys = {children["logit-cache"].data.params["teacher.sha256"] for _, children in runs[3:]}
    assert keys == {runs[0][1]["teacher"].data.tags["checkpoint_sha256"]}


@pytest.mark.usefixtures("prefect_server")
def test_logit_cache_on_disk_is_reused_when_prefect_forgot(
    mlflow_store: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    assert main(tiny_run_args(work)) == 0
    shutil.rmtree(work / "prefect-results")  # the task records are gone, the files are not
    assert main(tiny_run_args(work)) == 0
    (_, first), (parent, second) = pipeline_runs(MlflowClient(mlflow_store))
    assert parent.data.tags["reused_stages"] == "none"
    assert [c["logit-cache"].data.tags["cache_hit"] for c in (first, second)] == ["false", "true"]
    assert (
        first["logit-cache"].data.tags["cache_key"] == second["logit-cache"].data.tags["cache_key"]
    )
    assert "time_saved_seconds" in second["logit-cache"].data.metrics


@pytest.mark.usefixtures("prefect_server")
def test_failed_stage_marks_its_run_and_the_parent_failed(
    mlflow_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # an unreachable parity tolerance makes the export stage fail loudly
    args = ["run"] + [a for o in TINY_OVERRIDES for a in ("--set", o)]
    args += ["--set", f"work_dir={tmp_path / 'work'}"]
    args += ["--set", "export.max_abs_diff=1e-15", "--set", "export.rtol=0"]
    assert main(args) == 1
    assert "ParityError" in capsys.readouterr().err
    client = MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("kd-pipeline").experiment_id])
    status = {r.info.run_name: r.info.status for r in runs}
    assert status["onnx-export"] == "FAILED"
    # the report of which inputs failed and how far is kept for whoever investigates
    export_run = next(r for r in runs if r.info.run_name == "onnx-export")
    failure = mlflow.artifacts.load_dict(f"runs:/{export_run.info.run_id}/parity.json")
    assert failure["reports"]["dynamo"]["failing_inputs"]
    assert failure["reports"]["dynamo"]["max_abs_diff"] > 0
    assert not list((tmp_path / "work" / "onnx").rglob("*.onnx"))  # nothing handed on
    assert "benchmark" not in status
    assert "RUNNING" not in status.values()
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED" and "ParityError" in parent.data.tags["error"]


@pytest.mark.usefixtures("prefect_server")
def test_two_process_run_logs_the_same_stages_and_its_cache_equals_one_process(
    mlflow_store: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    assert main([*tiny_run_args(work), "--nproc", "2"]) == 0
    ((parent, children),) = pipeline_runs(MlflowClient(mlflow_store))
    assert sorted(children) == sorted(STAGES)
    assert parent.info.status == "FINISHED" and parent.data.params["distributed.nproc"] == "2"
    for role in ("teacher", "student-baseline", "student-kd"):
        assert children[role].data.params["processes"] == "2"
        # one process logged: one value per epoch
        history = MlflowClient(mlflow_store).get_metric_history(
            children[role].info.run_id, "train_loss"
        )
        assert [m.step for m in history] == [1]
    # the cache the two processes built is the one a single process builds, bit for bit
    key = children["logit-cache"].data.tags["cache_key"]
    (checkpoint,) = (work / "models" / "teacher").glob("*/model.pt")
    teacher, _ = load_checkpoint(checkpoint)
    spec = CacheSpec(**open_logit_cache(work / "cache" / key).manifest["spec"])
    dataset = load_dataset(next((work / "data").iterdir()))
    single = build_logit_cache(
        teacher, spec, dataset, tmp_path / "single", 512, torch.device("cpu")
    )
    assert single.key == key
    two = {p.name: p.read_bytes() for p in (work / "cache" / key).glob("*.npy")}
    one = {p.name: p.read_bytes() for p in Path(single.path).glob("*.npy")}
    assert two == one
