"""`kd sweep` on a tiny config: students in parallel through each kind of Prefect task runner,
one MLflow child run each, all from one teacher and one logit cache (the warm store's)."""

import csv
from pathlib import Path

import pytest

from flows.cli import main
from tests.flows.conftest import Store
from tests.helpers import pipeline_runs


def sweep_args(store: Store, *overrides: str) -> list[str]:
    return ["sweep", *store.args(*overrides)[1:]]


@pytest.mark.slow
@pytest.mark.e2e
def test_sweep_trains_one_student_per_setting_with_each_task_runner(
    warm_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    temperatures = "sweep.grid={distill.power: [0.2, 0.5]}"
    assert main(sweep_args(warm_store, temperatures, "sweep.task_runner=thread")) == 0
    out = capsys.readouterr().out
    assert "student-kd[distill.power=0.2]" in out and "kd compare " in out
    alphas = "sweep.grid={distill.kd_weight: [2], student.train.lr: [0.002, 0.004]}"
    # one worker process each: every one imports torch, Prefect and MLflow before it starts
    one_worker = "sweep.max_workers=1"
    assert main(sweep_args(warm_store, alphas, "sweep.task_runner=process", one_worker)) == 0
    ce = "sweep.grid={distill.ce_weight: [0.5]}"
    assert main(sweep_args(warm_store, ce, "sweep.task_runner=dask", one_worker)) == 0

    _, *runs = pipeline_runs(warm_store.client)  # after the warm store's own run
    assert len(runs) == 3
    (first, first_children), _, (last, last_children) = runs
    kd = {n: r for n, r in first_children.items() if n.startswith("student-kd[")}
    assert sorted(kd) == ["student-kd[distill.power=0.2]", "student-kd[distill.power=0.5]"]
    assert {r.data.params["distill.power"] for r in kd.values()} == {"0.2", "0.5"}
    assert {r.data.params["cache.key"] for r in kd.values()} == {
        first_children["logit-cache"].data.params["cache.key"]
    }
    assert all(r.info.status == "FINISHED" for r in first_children.values())
    # every sweep reuses the teacher, cache and baseline and trains only its own students
    for parent, children in runs:
        assert parent.data.tags["reused_stages"].startswith("teacher,logit-cache,student-baseline")
        for stage in ("teacher", "logit-cache", "student-baseline"):
            assert children[stage].data.tags["reused"] == "true", stage
    assert sorted(n for n in runs[1][1] if n.startswith("student-kd[")) == [
        "student-kd[distill.kd_weight=2,student.train.lr=0.002]",
        "student-kd[distill.kd_weight=2,student.train.lr=0.004]",
    ]
    assert sorted(n for n in last_children if n.startswith("student-kd[")) == [
        "student-kd[distill.ce_weight=0.5]"
    ]
    assert last.data.tags["sweep_best"] == "distill.ce_weight=0.5"

    # kd compare shows the sweep's students beside its teacher and baseline
    out_dir = tmp_path / "compare"
    assert main(["compare", first.info.run_id, "--out", str(out_dir)]) == 0
    with open(out_dir / "comparison.csv", newline="") as handle:
        variants = [row["variant"] for row in csv.DictReader(handle)]
    assert variants == [
        "teacher",
        "student-baseline",
        "student-kd[distill.power=0.2]",
        "student-kd[distill.power=0.5]",
    ]


def test_sweep_needs_a_grid_and_valid_points(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep"]) == 2
    assert "sweep.grid is empty" in capsys.readouterr().err
    assert main(["sweep", "--set", "sweep.grid={distill.power: [0.2, -1]}"]) == 2
    assert "sweep point distill.power=-1" in capsys.readouterr().err
    assert main(["sweep", "--set", "sweep.grid={teacher.train.epochs: [1, 2]}"]) == 2
    assert "only distill.* and student.*" in capsys.readouterr().err
