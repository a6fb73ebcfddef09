"""`kd sweep` on a tiny config: students in parallel through each kind of Prefect task runner,
one MLflow child run each, all from one teacher and one logit cache."""

import csv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from tests.flows.test_pipeline import pipeline_runs, tiny_run_args


def sweep_args(work: Path, *overrides: str) -> list[str]:
    return ["sweep", *tiny_run_args(work, *overrides)[1:]]


@pytest.mark.usefixtures("prefect_server")
def test_sweep_trains_one_student_per_setting_with_each_task_runner(
    mlflow_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    temperatures = "sweep.grid={distill.temperature: [2, 8]}"
    assert main(sweep_args(work, temperatures, "sweep.task_runner=thread")) == 0
    out = capsys.readouterr().out
    assert "student-kd[distill.temperature=2]" in out and "kd compare " in out
    alphas = "sweep.grid={distill.alpha: [0.5], student.train.lr: [0.002, 0.004]}"
    assert main(sweep_args(work, alphas, "sweep.task_runner=process")) == 0
    assert (
        main(sweep_args(work, "sweep.grid={distill.beta: [2, 4]}", "sweep.task_runner=dask")) == 0
    )

    runs = pipeline_runs(MlflowClient(mlflow_store))
    assert len(runs) == 3
    (first, first_children), _, (last, last_children) = runs
    kd = {n: r for n, r in first_children.items() if n.startswith("student-kd[")}
    assert sorted(kd) == ["student-kd[distill.temperature=2]", "student-kd[distill.temperature=8]"]
    assert {r.data.params["distill.temperature"] for r in kd.values()} == {"2.0", "8.0"}
    assert {r.data.params["cache.key"] for r in kd.values()} == {
        first_children["logit-cache"].data.tags["cache_key"]
    }
    assert all(r.info.status == "FINISHED" for r in first_children.values())
    # later sweeps reuse the teacher, cache and baseline and train only their own students
    for parent, children in runs[1:]:
        assert parent.data.tags["reused_stages"] == "teacher,logit-cache,student-baseline"
        for stage in ("teacher", "logit-cache", "student-baseline"):
            assert children[stage].data.tags["reused"] == "true", stage
    assert sorted(n for n in runs[1][1] if n.startswith("student-kd[")) == [
        "student-kd[distill.alpha=0.5,student.train.lr=0.002]",
        "student-kd[distill.alpha=0.5,student.train.lr=0.004]",
    ]
    assert sorted(n for n in last_children if n.startswith("student-kd[")) == [
        "student-kd[distill.beta=2]",
        "student-kd[distill.beta=4]",
    ]
    assert last.data.tags["sweep_best"].startswith("distill.beta=")

    # kd compare shows the sweep's students beside its teacher and baseline
    out_dir = tmp_path / "compare"
    assert main(["compare", first.info.run_id, "--out", str(out_dir)]) == 0
    with open(out_dir / "comparison.csv", newline="") as handle:
        variants = [row["variant"] for row in csv.DictReader(handle)]
    assert variants == [
        "teacher",
        "student-baseline",
        "student-kd[distill.temperature=2]",
        "student-kd[distill.temperature=8]",
    ]


def test_sweep_needs_a_grid_and_valid_points(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep"]) == 2
    assert "sweep.grid is empty" in capsys.readouterr().err
    assert main(["sweep", "--set", "sweep.grid={distill.temperature: [2, -1]}"]) == 2
    assert "sweep point distill.temperature=-1" in capsys.readouterr().err
    assert main(["sweep", "--set", "sweep.grid={teacher.train.epochs: [1, 2]}"]) == 2
    assert "only distill.* and student.*" in capsys.readouterr().err
