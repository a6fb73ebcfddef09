"""What a stage declares, checked without running one: the config view, the fingerprint and
the pipeline list."""

from pathlib import Path
from typing import Any

import pytest

from components.config import PipelineConfig, load_config
from components.io import sha256_file
from flows.pipeline import PIPELINE
from flows.refs import ModelRef
from flows.stage import (
    ConfigView,
    Ref,
    Stage,
    StageError,
    UndeclaredRead,
    check_pipeline,
    config_params,
    resolve_force,
)
from flows.stages.student_kd import StudentKD
from flows.stages.teacher import Teacher


class Upstream(Ref):
    sha256: str

    def identity(self) -> Any:
        return self.sha256


def inputs(sha: str = "a" * 64) -> dict[str, Ref]:
    return {need: Upstream(sha256=sha) for need in StudentKD.needs}


def test_a_stage_sees_only_what_it_declares() -> None:
    config = PipelineConfig()
    view: Any = ConfigView(config, frozenset(StudentKD.reads), StudentKD.name)
    assert view.student.train.epochs == config.student.train.epochs  # under a declared section
    assert view.cache.views == config.cache.views  # a declared leaf
    with pytest.raises(UndeclaredRead, match=r"'cache\.storage'"):
        _ = view.cache.storage  # its sibling is not declared
    with pytest.raises(UndeclaredRead, match="stage 'student-kd' reads config 'teacher'"):
        _ = view.teacher
    with pytest.raises(UndeclaredRead):
        view.model_dump()  # not the whole tree either


def test_the_fingerprint_follows_the_declared_inputs_and_nothing_else() -> None:
    stage = StudentKD()
    base = stage.fingerprint(PipelineConfig(), inputs())
    assert stage.fingerprint(PipelineConfig(), inputs()) == base  # stable
    for override in ("student.train.lr=0.01", "distill.power=0.5", "cache.views=4", "seed=3"):
        assert stage.fingerprint(load_config(None, [override]), inputs()) != base, override
    assert stage.fingerprint(PipelineConfig(), inputs("b" * 64)) != base  # new cache content
    # what the student does not read does not touch it
    for override in ("teacher.train.lr=0.01", "export.int8=false", "registry.alias=x"):
        assert stage.fingerprint(load_config(None, [override]), inputs()) == base, override
    # and the run that made an input is not its identity
    moved = {name: ref.model_copy(update={"run_id": "other"}) for name, ref in inputs().items()}
    assert stage.fingerprint(PipelineConfig(), moved) == base


def test_declared_sections_become_params_under_their_config_names() -> None:
    params = config_params(PipelineConfig(), Teacher.reads)
    assert params["teacher.train.epochs"] == 12 and params["teacher.model.name"] == "resnet_small"
    assert params["seed"] == 0 and params["distributed.nproc"] == 1
    assert not any(key.startswith("student.") for key in params)


def test_the_pipeline_list_is_checked() -> None:
    check_pipeline(PIPELINE)
    with pytest.raises(ValueError, match="needs"):
        check_pipeline(tuple(reversed(PIPELINE)))
    with pytest.raises(ValueError, match="appears twice"):
        check_pipeline((*PIPELINE, PIPELINE[1]))


def test_force_names_only_cached_stages() -> None:
    assert resolve_force(["all"], PIPELINE) == {s.name for s in PIPELINE if s.cached}
    assert resolve_force(["teacher"], PIPELINE) == {"teacher"}
    with pytest.raises(StageError, match="handoff"):
        resolve_force(["handoff"], PIPELINE)  # runs every time: nothing to force


def test_every_stage_declares_a_name_an_output_and_sections_the_config_has() -> None:
    names = [stage.name for stage in PIPELINE]
    assert len(set(names)) == len(names)
    for stage in PIPELINE:
        assert issubclass(stage.output, Ref) and isinstance(stage, Stage)
        for path in (*stage.reads, *stage.settings):
            config_params(PipelineConfig(), (path,))  # an unknown path raises here


def test_references_verify_their_files(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.pt").write_bytes(b"weights")
    (tmp_path / "m" / "history.json").write_text("[]")

    ref = ModelRef(
        arch="cnn_tiny",
        checkpoint="m/model.pt",
        sha256=sha256_file(tmp_path / "m" / "model.pt"),
        history="m/history.json",
        parameters=1,
        size_bytes=7,
        test_accuracy=0.5,
        val_accuracy=0.5,
    )
    assert ref.verify(tmp_path) is None
    (tmp_path / "m" / "model.pt").write_bytes(b"changed")
    assert "changed since it was cached" in (ref.verify(tmp_path) or "")
    (tmp_path / "m" / "model.pt").unlink()
    assert "no longer exists" in (ref.verify(tmp_path) or "")


@pytest.mark.parametrize(
    "old_path",
    [
        "flows.stages.prepare_data.DataRef",
        "flows.stages.training.ModelRef",
        "flows.stages.logit_cache.CacheRef",
        "flows.stages.onnx_export.OnnxRef",
        "flows.stages.benchmark.BenchmarkRef",
        "flows.stages.handoff.HandoffRef",
        "flows.stages.promotion.PromotionRef",
        "flows.stages.report.ReportRef",
    ],
)
def test_references_persisted_before_refs_moved_still_load(old_path: str) -> None:
    # Prefect stores a cached stage's reference under its class's import path, and reads it
    # back through that path: an existing work dir's results name the stage modules
    from prefect.utilities.importtools import from_qualified_name

    import flows.refs

    found = from_qualified_name(old_path)
    assert found is getattr(flows.refs, old_path.rpartition(".")[2])
