"""Does distillation beat the same student trained alone? Chosen on cross-validation,
reported on test, with one observation per independent unit.

    python benchmarks/distill_quality.py --out DIR [--quick] [--workers 2]
        [--store DIR] [--work DIR] [--config FILE] [--set key=value ...]

Units. A unit is one fold, one teacher seed and one student seed together: unit u holds
out fold u mod k of the pool (components/folds.py: fold 0 is the pipeline's own validation
split; every fold trains on as many images as the pipeline) and uses seed ``seed + u`` for
its teacher, its students and their views. No model, control or view is shared between units
(each has its own teacher, its own control and its own views; units u and u + k hold out the
same fold), so each is one observation, and every interval here is a Student-t interval over
units.

Protocol (validation chooses, test reports). Every choice reads held-out fold accuracy,
never the test split; a candidate replaces the incumbent default only when its paired
advantage over the units is significant (components/selection.py), and the benchmark says
how often the choice would be made again (bootstrap over units). The phases, in order, each
starting from what the one before chose:
1. ``teacher``: the teacher's recipe, judged by the distilled student it produces (at the
   config's student budget and method);
2. ``method``: the distillation method and its settings (each method's controls get that
   method's augmentation, strong views included);
3. ``patience``: the student budget, a grid of epochs x cached views, the distilled student
   and its control (the better of label smoothing 0 and 0.1, on the same cached views, at
   every budget) with the same optimizer, schedule and views; the default budget is chosen
   among those whose default run costs no more than the incumbent's (``run_cost``), the
   patient budget among all;
4. ``control``: the label-only control's recipe at the chosen budget (cached or fresh views,
   label smoothing 0 or 0.1): the one the pipeline then trains;
5. ``report``: the chosen default and its control on ``report_units`` fresh units (none of
   them read by a choice), on test:
   ``gap_closed_by_default`` (share of the teacher-control gap closed, from the means),
   ``default_vs_control_ci_low`` (the 95% interval's low end of the test accuracy
   difference, over units), ``kd_error_reduction_vs_best_baseline``.

Resumable. Every unit's result is a small JSON under ``--store`` (default
benchmarks/results/distill_quality_units), written whole as it finishes, keyed by everything
that produced it; a later call reuses it and never trains it again, so the benchmark can run
in parts across sessions. Teacher weights and logit caches live under ``--work`` (default
.kd-bench/, not committed); a teacher whose weights are gone is retrained when a new student
needs it. ``--workers N`` trains N units at once, one thread each. ``--quick``: a reduced
grid (3 units, 2 teacher recipes, 2 methods, 2 x 2 budgets, short schedules) in minutes,
writing the same JSON keys. Writes DIR/distill_quality.json, DIR/distill_quality.md and
DIR/patience.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.config import PipelineConfig, load_config
from components.data import Dataset, load_dataset, prepare_dataset
from components.folds import fold_count, fold_dataset
from components.inference import predict_logits
from components.io import sha256_json, write_json, write_text
from components.logit_cache import build_logit_cache, open_logit_cache, pipeline_cache_spec
from components.models import build_model, count_parameters
from components.recipes import (
    CONTROL_CANDIDATES,
    Recipe,
    control_recipe,
    fit,
    student_recipe,
    teacher_recipe,
)
from components.report import patience_chart
from components.selection import best_mean_rate, choose, paired_standard_error, reselection_rate
from components.stats import mean_interval

UNIT_VERSION = 1  # bump when a unit's result changes meaning: stored results then miss
GOAL_GAP_CLOSED = 0.60
TWO_VIEWS = "student.train.augment.strong={}"

# Candidates. "config" is always the incumbent: the config's own setting.
TEACHERS: dict[str, list[str]] = {
    "config": [],
    "ls0": ["teacher.train.label_smoothing=0"],
    "ls0+mixup0.2": ["teacher.train.label_smoothing=0", "teacher.train.augment.mixup_alpha=0.2"],
    "ls0,6-epochs": ["teacher.train.label_smoothing=0", "teacher.train.epochs=6"],
}
METHODS: dict[str, list[str]] = {
    "config": [],
    "hinton-T4": ["distill={kind: hinton, temperature: 4, alpha: 0.9}"],
    "hinton-T1": ["distill={kind: hinton, temperature: 1, alpha: 0.9}"],
    "hinton+ls-T2": ["distill={kind: hinton, standardize: true, temperature: 2, alpha: 0.9}"],
    "dkd-b8": ["distill={kind: dkd, beta: 8}"],
    "dist": ["distill={kind: dist}"],
    "wttm": ["distill={kind: wttm}"],
    "mlkd+ls": ["distill={kind: mlkd, standardize: true}", TWO_VIEWS],
}
CONTROLS = CONTROL_CANDIDATES  # the label-only control's candidates
PATIENCE_CONTROLS = ("cached-ls0", "cached-ls0.1")


@dataclass(frozen=True)
class Protocol:
    """The sizes of one benchmark: how many units each phase reads, and the grids."""

    units: int = 9  # phases teacher, method, control; one full pass over 9 folds
    patience_units: int = 5
    report_units: int = 15
    epochs: tuple[int, ...] = (24, 48, 96, 192)
    views: tuple[int, ...] = (8, 32, 64)
    teachers: tuple[str, ...] = tuple(TEACHERS)
    methods: tuple[str, ...] = tuple(METHODS)
    # Overrides laid under the user's: what the stored units were run with. The split of
    # before content splits, and the method the benchmark started from as the incumbent
    # ("config" in TEACHERS and METHODS), which phase 2 replaced as the default.
    base: tuple[str, ...] = ("split.method=shuffle", "distill={kind: dkd, beta: 2.0}")


QUICK = Protocol(
    units=3,
    patience_units=2,
    report_units=3,
    epochs=(3, 6),
    views=(2, 4),
    teachers=("config", "ls0"),
    methods=("config", "hinton-T4"),
    base=(*Protocol.base, "teacher.train.epochs=2", "student.train.epochs=3", "cache.views=2"),
)


# --- units and the store ----------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What every worker needs to rebuild a unit's data and config: picklable."""

    config_path: Path | None
    overrides: tuple[str, ...]
    store: Path
    work: Path

    def config(self, unit: int, *overrides: str) -> PipelineConfig:
        base = load_config(self.config_path, list(self.overrides))
        # The unit's seed drives its teacher, students and views; each worker runs one
        # thread, so the teacher runs in PyTorch for the cache (ONNX Runtime takes all cores).
        return load_config(
            self.config_path,
            [*self.overrides, *overrides, f"seed={base.seed + unit}", "cache.runtime=pytorch"],
        )


@cache
def _pool(ctx: Context) -> Dataset:
    base = load_config(ctx.config_path, list(ctx.overrides))
    info = prepare_dataset(base.data, base.split, ctx.work / "data")
    return load_dataset(info.path)


def unit_data(ctx: Context, unit: int) -> Dataset:
    pool = _pool(ctx)
    base = load_config(ctx.config_path, list(ctx.overrides))
    return _fold(ctx, unit % fold_count(pool), base.split.seed)


@cache
def _fold(ctx: Context, fold: int, seed: int) -> Dataset:
    pool = _pool(ctx)
    return fold_dataset(pool, fold, fold_count(pool), seed)


@dataclass(frozen=True)
class Student:
    """A student of one unit: distilled (``control`` None) or label-only (a CONTROLS name)."""

    teacher: tuple[str, ...]  # the teacher's overrides (ignored by a control)
    overrides: tuple[str, ...]  # the student's: method, budget, augmentation
    control: str | None = None


def teacher_key(ctx: Context, unit: int, teacher: Iterable[str]) -> str:
    config = ctx.config(unit, *teacher)
    return sha256_json(
        {
            "v": UNIT_VERSION,
            "data": unit_data(ctx, unit).info.fingerprint,
            # retrain says when the pipeline trains a teacher again, not what it trains
            "teacher": config.teacher.model_dump(mode="json", exclude={"retrain"}),
            "seed": config.seed,
            "device": config.device,
        }
    )[:20]


def _recipe(ctx: Context, unit: int, student: Student) -> Recipe:
    config = ctx.config(unit, *student.overrides)
    if student.control is None:
        return student_recipe(config, distilled=True)
    return control_recipe(config, *CONTROLS[student.control])


def student_key(ctx: Context, unit: int, student: Student) -> str:
    config = ctx.config(unit, *student.overrides)
    recipe = _recipe(ctx, unit, student)
    payload: dict[str, Any] = {
        "v": UNIT_VERSION,
        "data": unit_data(ctx, unit).info.fingerprint,
        "arch": recipe.arch,
        "train": recipe.train.model_dump(mode="json"),
        "seed": recipe.seed,
        "view_seed": recipe.view_seed,
        "view_pool": recipe.view_pool,
        "device": config.device,
    }
    if student.control is None:
        payload |= {
            "teacher": teacher_key(ctx, unit, student.teacher),
            "distill": config.distill.model_dump(mode="json"),
            "cache": config.cache.model_dump(mode="json", exclude={"chunk_rows", "batch_size"}),
        }
    return sha256_json(payload)[:20]


def _bits(correct: np.ndarray) -> str:
    return np.packbits(correct.astype(bool)).tobytes().hex()


def unbits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


def _scores(model: torch.nn.Module, dataset: Dataset) -> dict[str, Any]:
    """Held-out (the fold's validation split) and test accuracy, and which image each got
    right (the paired statistics need them)."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        images, labels = dataset.split(split)
        logits = predict_logits(model, np.asarray(images), dataset, torch.device("cpu"))
        correct = (logits.argmax(1).numpy() == labels).astype(bool)
        out |= {
            f"{split}_accuracy": float(correct.mean()),
            f"{split}_n": len(correct),
            f"{split}_correct": _bits(correct),
        }
    return out


def _write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)


def read_result(ctx: Context, kind: str, key: str) -> dict[str, Any] | None:
    path = ctx.store / kind / f"{key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _teacher_model(ctx: Context, unit: int, teacher: tuple[str, ...]) -> torch.nn.Module:
    """The unit's teacher: its stored weights, else trained now (and its result stored)."""
    key = teacher_key(ctx, unit, teacher)
    weights = ctx.work / "teachers" / f"{key}.pt"
    config = ctx.config(unit, *teacher)
    dataset = unit_data(ctx, unit)
    if weights.is_file():
        info = dataset.info
        model = build_model(
            config.teacher.model.name, info.in_channels, info.num_classes, min(info.image_size)
        )
        model.load_state_dict(torch.load(weights, weights_only=True))
        if read_result(ctx, "teachers", key) is None:  # weights kept, the store started anew
            _record_teacher(ctx, key, unit, teacher, config, model, dataset, None)
        return model.eval()
    started = time.perf_counter()
    model, _ = fit(teacher_recipe(config), dataset, torch.device(_device(config)))
    seconds = time.perf_counter() - started
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, weights)
    _record_teacher(ctx, key, unit, teacher, config, model, dataset, seconds)
    return model.eval()


def _record_teacher(
    ctx: Context,
    key: str,
    unit: int,
    teacher: tuple[str, ...],
    config: PipelineConfig,
    model: torch.nn.Module,
    dataset: Dataset,
    seconds: float | None,  # None: trained by an earlier call whose record is gone
) -> None:
    _write(
        ctx.store / "teachers" / f"{key}.json",
        {
            "key": key,
            "unit": unit,
            "overrides": list(teacher),
            "epochs": config.teacher.train.epochs,
            "seconds": seconds,
            "parameters": count_parameters(model),
            **_scores(model, dataset),
        },
    )


def _device(config: PipelineConfig) -> str:
    return "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"


def _train_student(ctx: Context, unit: int, student: Student) -> None:
    key = student_key(ctx, unit, student)
    if read_result(ctx, "students", key) is not None:
        return
    config = ctx.config(unit, *student.overrides)
    dataset = unit_data(ctx, unit)
    device = torch.device(_device(config))
    recipe = _recipe(ctx, unit, student)
    targets, cache_seconds = None, None
    if student.control is None:
        teacher = _teacher_model(ctx, unit, student.teacher)
        spec = pipeline_cache_spec(
            config, teacher_key(ctx, unit, student.teacher), dataset.info.fingerprint
        )
        started = time.perf_counter()
        built = build_logit_cache(
            teacher, spec, dataset, ctx.work / "cache", config.cache.chunk_rows, device
        )
        if not built.cache_hit:
            cache_seconds = time.perf_counter() - started
            _write(
                ctx.store / "caches" / f"{built.key[:20]}.json",
                {"views": spec.views, "rows": built.rows, "build_seconds": cache_seconds},
            )
        targets = open_logit_cache(Path(built.path))
    started = time.perf_counter()
    model, _ = fit(recipe, dataset, device, teacher_logits=targets)
    _write(
        ctx.store / "students" / f"{key}.json",
        {
            "key": key,
            "unit": unit,
            "teacher": list(student.teacher),
            "overrides": list(student.overrides),
            "control": student.control,
            "epochs": recipe.train.epochs,
            "views": config.cache.views,
            "seconds": time.perf_counter() - started,
            **_scores(model, dataset),
        },
    )


@dataclass(frozen=True)
class Task:
    """One worker's job: a unit's teacher, or a group of its students that share a cache."""

    ctx: Context
    unit: int
    teacher: tuple[str, ...] | None = None
    students: tuple[Student, ...] = ()
    cost: float = 0.0  # for ordering: longest first


def run_task(task: Task) -> None:
    if task.teacher is not None:
        _teacher_model(task.ctx, task.unit, task.teacher)
    for student in task.students:
        _train_student(task.ctx, task.unit, student)


def _init_worker() -> None:
    torch.set_num_threads(1)
    if sys.platform == "linux":  # a worker dies with the benchmark, never trains on alone
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def execute(ctx: Context, tasks: list[Task], workers: int) -> None:
    """Run the tasks whose results are missing: teachers first, then students, each stage
    over ``workers`` processes (one thread each), longest first."""
    todo = [t for t in tasks if not _done(ctx, t)]
    teachers = {(t.unit, t.teacher) for t in todo if t.teacher is not None} | {
        (t.unit, s.teacher)
        for t in todo
        for s in t.students
        if s.control is None
        and read_result(ctx, "teachers", teacher_key(ctx, t.unit, s.teacher)) is None
    }
    stages = [
        [Task(ctx, unit, teacher) for unit, teacher in sorted(teachers) if teacher is not None],
        sorted((replace(t, teacher=None) for t in todo if t.students), key=lambda t: -t.cost),
    ]
    for stage in stages:
        if not stage:
            continue
        print(f"  {len(stage)} tasks on {workers} worker(s)", flush=True)
        if workers <= 1:
            for task in stage:
                run_task(task)
            continue
        with ProcessPoolExecutor(workers, get_context("spawn"), _init_worker) as pool:
            for _ in pool.map(run_task, stage):
                pass


def _done(ctx: Context, task: Task) -> bool:
    if task.teacher is not None and (
        read_result(ctx, "teachers", teacher_key(ctx, task.unit, task.teacher)) is None
    ):
        return False
    return all(
        read_result(ctx, "students", student_key(ctx, task.unit, s)) is not None
        for s in task.students
    )


def student_tasks(ctx: Context, units: Iterable[int], students: list[Student]) -> list[Task]:
    """The students of every unit, grouped by unit, teacher and cached views (a group
    builds or opens its cache once)."""
    tasks = []
    for unit in units:
        groups: dict[Any, list[Student]] = {}
        for s in students:
            views = ctx.config(unit, *s.overrides).cache.views
            groups.setdefault((s.teacher if s.control is None else None, views), []).append(s)
        for group in groups.values():
            cost = sum(ctx.config(unit, *s.overrides).student.train.epochs for s in group)
            tasks.append(Task(ctx, unit, students=tuple(group), cost=cost))
    return tasks


def result(ctx: Context, unit: int, student: Student) -> dict[str, Any]:
    found = read_result(ctx, "students", student_key(ctx, unit, student))
    if found is None:
        raise RuntimeError(f"unit {unit}: no result for {student}")
    return found


def teacher_result(ctx: Context, unit: int, teacher: tuple[str, ...]) -> dict[str, Any]:
    found = read_result(ctx, "teachers", teacher_key(ctx, unit, teacher))
    if found is None:
        raise RuntimeError(f"unit {unit}: no teacher result for {teacher}")
    return found


# --- phases ----------------------------------------------------------------------------------


@dataclass
class Bench:
    """The benchmark's state as the phases run: context, sizes, choices so far."""

    ctx: Context
    protocol: Protocol
    workers: int
    out: Path
    rates: Path | None = None  # default_run.json: what a default run's work costs here
    teacher: tuple[str, ...] = ()
    method: tuple[str, ...] = ()
    budget: tuple[str, ...] = ()
    report: dict[str, Any] = field(default_factory=dict)

    def units(self, n: int) -> list[int]:
        return list(range(n))

    def controls(self, names: Iterable[str], overrides: tuple[str, ...]) -> list[Student]:
        return [Student((), overrides, name) for name in names]

    def best_control(
        self, units: list[int], overrides: tuple[str, ...], names: Iterable[str] = tuple(CONTROLS)
    ) -> tuple[str, np.ndarray]:
        """The control candidate with the best mean held-out accuracy, and its per-unit
        accuracies (the strongest fair control of those students)."""
        held = {
            n: np.array([result(self.ctx, u, s)["val_accuracy"] for u in units])
            for n, s in ((n, Student((), overrides, n)) for n in names)
        }
        best = max(held, key=lambda n: held[n].mean())
        return best, held[best]


def _summary(scores: dict[str, np.ndarray], control: np.ndarray) -> dict[str, Any]:
    """Each candidate's mean held-out accuracy and paired difference against the control."""
    return {
        name: {
            "held_out_accuracy_mean": float(s.mean()),
            "vs_control": mean_interval(s - control).as_dict(),
            "vs_control_standard_error": paired_standard_error(s - control),
        }
        for name, s in scores.items()
    }


def _decision(scores: dict[str, np.ndarray]) -> dict[str, Any]:
    choice = choose(scores, "config")
    return choice.as_dict() | {"reselection_rate": reselection_rate(scores, "config")}


def phase_teacher(bench: Bench) -> None:
    ctx, units = bench.ctx, bench.units(bench.protocol.units)
    teachers = {n: tuple(TEACHERS[n]) for n in bench.protocol.teachers}
    kd = [Student(t, ()) for t in teachers.values()]
    controls = bench.controls(CONTROLS, ())
    execute(ctx, student_tasks(ctx, units, kd + controls), bench.workers)
    scores = {
        n: np.array([result(ctx, u, Student(t, ()))["val_accuracy"] for u in units])
        for n, t in teachers.items()
    }
    control_name, control = bench.best_control(units, ())
    decision = _decision(scores)
    bench.teacher = teachers[decision["chosen"]]
    bench.report["teacher"] = {
        "candidates": {n: list(t) for n, t in teachers.items()},
        "judged_by": "the distilled student (the config's method and budget), held-out folds",
        "students": _summary(scores, control),
        "teachers_held_out_accuracy": {
            n: statistics.mean(teacher_result(ctx, u, t)["val_accuracy"] for u in units)
            for n, t in teachers.items()
        },
        "teacher_seconds": {
            n: statistics.mean(teacher_result(ctx, u, t)["seconds"] for u in units)
            for n, t in teachers.items()
        },
        "control": control_name,
        "decision": decision,
    }
    print(f"teacher: {decision['chosen']} (best mean {decision['best_mean']})", flush=True)


def phase_method(bench: Bench) -> None:
    ctx, units = bench.ctx, bench.units(bench.protocol.units)
    methods = {n: tuple(METHODS[n]) for n in bench.protocol.methods}
    kd = [Student(bench.teacher, m) for m in methods.values()]
    # Each method's control sees that method's augmentation (strong views included).
    augments = {n: _augmentation(m) for n, m in methods.items()}
    controls = [c for a in set(augments.values()) for c in bench.controls(CONTROLS, a)]
    execute(ctx, student_tasks(ctx, units, kd + controls), bench.workers)
    scores = {
        n: np.array([result(ctx, u, Student(bench.teacher, m))["val_accuracy"] for u in units])
        for n, m in methods.items()
    }
    summaries = {}
    for name, s in scores.items():
        control_name, control = bench.best_control(units, augments[name])
        summaries[name] = _summary({name: s}, control)[name] | {"control": control_name}
    decision = _decision(scores)
    bench.method = methods[decision["chosen"]]
    bench.report["method"] = {
        "candidates": {n: list(m) for n, m in methods.items()},
        "students": summaries,
        "decision": decision,
    }
    print(f"method: {decision['chosen']} (best mean {decision['best_mean']})", flush=True)


def _augmentation(method: tuple[str, ...]) -> tuple[str, ...]:
    """What a method's control shares with it: a two-view method's strong views (the whole
    method's overrides, which the config needs to accept strong views; a control ignores
    the loss)."""
    return method if TWO_VIEWS in method else ()


def _cell(epochs: int, views: int) -> tuple[str, ...]:
    return (f"student.train.epochs={epochs}", f"cache.views={views}")


def run_cost(
    teacher_epochs: int, epochs: int, views: int, costs: dict[str, Any], controls: int = 1
) -> float:
    """Seconds of the work a default run spends on training and the cache: the teacher's
    epochs, the cache's views, and the distilled student's and ``controls`` controls'
    epochs, at the given rates (``_costs``)."""
    return (
        teacher_epochs * costs["teacher_epoch"]
        + views * costs["cache_view"]
        + epochs * (1 + controls) * costs["student_epoch"]
    )


def phase_patience(bench: Bench) -> None:
    ctx, protocol = bench.ctx, bench.protocol
    units = bench.units(protocol.patience_units)
    base = ctx.config(0)
    incumbent = (base.student.train.epochs, base.cache.views)
    cells = sorted({*itertools.product(protocol.epochs, protocol.views), incumbent})
    aug = _augmentation(bench.method)
    kd = [Student(bench.teacher, (*bench.method, *_cell(e, v))) for e, v in cells]
    controls = [
        c for e, v in cells for c in bench.controls(PATIENCE_CONTROLS, (*aug, *_cell(e, v)))
    ]
    execute(ctx, student_tasks(ctx, units, kd + controls), bench.workers)

    grid = []
    for (e, v), student in zip(cells, kd, strict=True):
        held = np.array([result(ctx, u, student)["val_accuracy"] for u in units])
        test = np.array([result(ctx, u, student)["test_accuracy"] for u in units])
        control_name, control = bench.best_control(units, (*aug, *_cell(e, v)), PATIENCE_CONTROLS)
        control_test = np.array(
            [
                result(ctx, u, Student((), (*aug, *_cell(e, v)), control_name))["test_accuracy"]
                for u in units
            ]
        )
        grid.append(
            {
                "epochs": e,
                "views": v,
                "kd_held_out": mean_interval(held).as_dict(),
                "control_held_out": mean_interval(control).as_dict(),
                "kd_vs_control_held_out": mean_interval(held - control).as_dict(),
                "control": control_name,
                "kd_test_mean": float(test.mean()),
                "control_test_mean": float(control_test.mean()),
                "kd_vs_control_test": mean_interval(test - control_test).as_dict(),
                "student_seconds": statistics.mean(
                    result(ctx, u, student)["seconds"] for u in units
                ),
                "kd_per_unit": held.tolist(),
            }
        )
    costs = _costs(bench, grid)
    teacher_epochs = ctx.config(0, *bench.teacher).teacher.train.epochs
    old_teacher_epochs = base.teacher.train.epochs
    # The incumbent default run: its teacher, its cache, its student and four controls.
    limit = run_cost(old_teacher_epochs, *incumbent, costs, controls=len(CONTROLS))
    for cell in grid:
        cell["run_cost_seconds"] = run_cost(teacher_epochs, cell["epochs"], cell["views"], costs)
        cell["fits_default_run"] = cell["run_cost_seconds"] <= limit
    scores = {
        (
            "config" if (c["epochs"], c["views"]) == incumbent else f"{c['epochs']}x{c['views']}"
        ): np.array(c["kd_per_unit"])
        for c in grid
    }
    feasible = {
        k: s
        for (k, s), c in zip(scores.items(), grid, strict=True)
        if c["fits_default_run"] or k == "config"
    }
    default = _decision(feasible)
    patient = _decision(scores)
    chosen = next(c for k, c in zip(scores, grid, strict=True) if k == default["chosen"])
    bench.budget = _cell(chosen["epochs"], chosen["views"])
    patient_cell = next(c for k, c in zip(scores, grid, strict=True) if k == patient["chosen"])
    bench.report["patience"] = {
        "units": len(units),
        "grid": grid,
        "costs_per_unit_seconds": costs,
        "incumbent_run_cost_seconds": limit,
        "default_decision": default,
        "patient_decision": patient,
        "patient_budget": {"epochs": patient_cell["epochs"], "views": patient_cell["views"]},
    }
    patience_chart(grid, bench.out / "patience.png")
    print(f"budget: {default['chosen']}, patient {patient['chosen']}", flush=True)


def _costs(bench: Bench, grid: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per teacher epoch, per cached view and per student epoch in a default run: the
    rates ``benchmarks/default_run.py`` measured on this machine (its ``rates``), else the
    units' own (one thread each, measured here: a stand-in until a default run is measured)."""
    if bench.rates is not None and bench.rates.is_file():
        measured = json.loads(bench.rates.read_text()).get("rates")
        if measured:
            return {**measured, "source": str(bench.rates)}
    ctx = bench.ctx
    teachers = [json.loads(p.read_text()) for p in (ctx.store / "teachers").glob("*.json")]
    caches = [json.loads(p.read_text()) for p in (ctx.store / "caches").glob("*.json")]
    teacher_rates = [t["seconds"] / t["epochs"] for t in teachers if t["seconds"] is not None]
    cache_rates = [c["build_seconds"] / c["views"] for c in caches]
    if not teacher_rates or not cache_rates:
        raise SystemExit(
            "no cost rates: give --rates (benchmarks/default_run.py's default_run.json), or "
            "keep the store of the call that trained the teachers and built the caches"
        )
    return {
        "teacher_epoch": statistics.median(teacher_rates),
        "cache_view": statistics.median(cache_rates),
        "student_epoch": statistics.median(c["student_seconds"] / c["epochs"] for c in grid),
        "source": "the units of this benchmark (one thread each)",
    }


def phase_control(bench: Bench) -> None:
    ctx, units = bench.ctx, bench.units(bench.protocol.units)
    aug = _augmentation(bench.method)
    overrides = (*aug, *bench.budget)
    kd = Student(bench.teacher, (*bench.method, *bench.budget))
    execute(
        ctx, student_tasks(ctx, units, [kd, *bench.controls(CONTROLS, overrides)]), bench.workers
    )
    scores = {
        n: np.array([result(ctx, u, Student((), overrides, n))["val_accuracy"] for u in units])
        for n in CONTROLS
    }
    # No incumbent among the four: the best mean is the strongest fair control.
    best = max(scores, key=lambda n: scores[n].mean())
    kd_held = np.array([result(ctx, u, kd)["val_accuracy"] for u in units])
    bench.report["control"] = {
        "chosen": best,
        "views": CONTROLS[best][0],
        "label_smoothing": CONTROLS[best][1],
        "candidates": _summary(scores, scores[best]),
        "reselection_rate": best_mean_rate(scores),
        "default_vs_control_held_out": mean_interval(kd_held - scores[best]).as_dict(),
        "default_vs_control_held_out_standard_error": paired_standard_error(kd_held - scores[best]),
        "units": len(units),
    }
    print(f"control: {best}", flush=True)


def phase_report(bench: Bench) -> None:
    ctx = bench.ctx
    # Units no choice was made on: a unit whose held-out score helped choose would carry its
    # luck (a good seed is good on test too) into the figures reported.
    first = bench.protocol.units
    units = list(range(first, first + bench.protocol.report_units))
    control_name = bench.report["control"]["chosen"]
    aug = _augmentation(bench.method)
    kd = Student(bench.teacher, (*bench.method, *bench.budget))
    control = Student((), (*aug, *bench.budget), control_name)
    execute(ctx, student_tasks(ctx, units, [kd, control]), bench.workers)
    kd_test = np.array([result(ctx, u, kd)["test_accuracy"] for u in units])
    control_test = np.array([result(ctx, u, control)["test_accuracy"] for u in units])
    teacher_test = np.array([teacher_result(ctx, u, bench.teacher)["test_accuracy"] for u in units])
    difference = mean_interval(kd_test - control_test)
    gap = teacher_test.mean() - control_test.mean()
    # No gap to close (the control as good as the teacher): no share of it either.
    gap_closed = float((kd_test.mean() - control_test.mean()) / gap) if gap > 0 else None
    rng = np.random.default_rng(0)
    resampled = []
    for _ in range(2000):
        pick = rng.integers(0, len(units), len(units))
        g = teacher_test[pick].mean() - control_test[pick].mean()
        if g > 0:
            resampled.append((kd_test[pick].mean() - control_test[pick].mean()) / g)
    n_test = result(ctx, 0, kd)["test_n"]
    bench.report["default"] = {
        "teacher": list(bench.teacher),
        "method": list(bench.method),
        "budget": list(bench.budget),
        "control": control_name,
        "units": len(units),
        "test_n": n_test,
        "teacher_test_accuracy": mean_interval(teacher_test).as_dict(),
        "kd_test_accuracy": mean_interval(kd_test).as_dict(),
        "control_test_accuracy": mean_interval(control_test).as_dict(),
        "kd_vs_control_test": difference.as_dict(),
        "gap_closed_interval": [
            float(np.quantile(resampled, 0.025)),
            float(np.quantile(resampled, 0.975)),
        ]
        if resampled
        else None,
        "per_unit": {
            "teacher": teacher_test.tolist(),
            "kd": kd_test.tolist(),
            "control": control_test.tolist(),
        },
    }
    bench.report |= {
        "gap_closed_by_default": gap_closed,
        "default_vs_control_ci_low": difference.interval[0],
        "kd_error_reduction_vs_best_baseline": 1 - (1 - kd_test.mean()) / (1 - control_test.mean()),
        "goal_gap_closed": GOAL_GAP_CLOSED,
    }


PHASES = {
    "teacher": phase_teacher,
    "method": phase_method,
    "patience": phase_patience,
    "control": phase_control,
    "report": phase_report,
}


def main(argv: list[str] | None = None) -> int:
    from flows.cli import add_config_arguments

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    add_config_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="a reduced grid, in minutes")
    parser.add_argument("--workers", type=int, default=1, help="units trained at once")
    parser.add_argument(
        "--store", type=Path, help="unit results (default: DIR/distill_quality_units)"
    )
    parser.add_argument("--work", type=Path, default=Path(".kd-bench"), help="weights, caches")
    parser.add_argument("--until", choices=list(PHASES), help="stop after this phase")
    parser.add_argument(
        "--rates",
        type=Path,
        default=Path("benchmarks/results/default_run.json"),
        help="a default run's measured cost rates (benchmarks/default_run.py), for which "
        "budgets fit the default run",
    )
    args = parser.parse_args(argv)

    protocol = QUICK if args.quick else Protocol()
    overrides = (*protocol.base, *args.overrides)
    load_config(args.config, list(overrides))  # a bad config fails here, before any work
    store = args.store or args.out / "distill_quality_units"
    ctx = Context(args.config, overrides, store.resolve(), args.work.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(ctx, protocol, args.workers, args.out, args.rates)
    started = time.perf_counter()
    pool = _pool(ctx)
    base = ctx.config(0)
    info = pool.info
    teacher_parameters = count_parameters(
        build_model(
            base.teacher.model.name, info.in_channels, info.num_classes, min(info.image_size)
        )
    )
    student_parameters = count_parameters(
        build_model(
            base.student.model.name, info.in_channels, info.num_classes, min(info.image_size)
        )
    )
    bench.report |= {
        "quick": args.quick,
        "protocol": {
            "units": protocol.units,
            "patience_units": protocol.patience_units,
            "report_units": protocol.report_units,
            "folds": fold_count(pool),
            "unit": "fold u mod folds, seed config.seed + u for its teacher, students and "
            "views; nothing shared between units",
            "held_out_n_per_unit": info.split_sizes["val"],
            "test_n": info.split_sizes["test"],
            "overrides": list(overrides),
        },
        "compression_ratio": teacher_parameters / student_parameters,
        "teacher_parameters": teacher_parameters,
        "student_parameters": student_parameters,
    }
    for name, phase in PHASES.items():
        print(f"phase {name}", flush=True)
        phase(bench)
        bench.report["phases_done"] = [*bench.report.get("phases_done", []), name]
        bench.report["wall_seconds_this_call"] = time.perf_counter() - started
        _write_report(bench)
        if name == args.until:
            break
    return 0


def _points(estimate: dict[str, Any]) -> str:
    lo, hi = estimate["interval"]
    return f"{estimate['estimate'] * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}]"


def _accuracy(estimate: dict[str, Any]) -> str:
    lo, hi = estimate["interval"]
    return f"{estimate['estimate']:.4f} [{lo:.4f}, {hi:.4f}]"


def _decision_lines(decision: dict[str, Any]) -> list[str]:
    chosen = decision["chosen"]
    lines = [
        "| candidate | held-out accuracy (mean) | vs the incumbent, points [95% CI] | SE | "
        "p (one-sided) | picked again (bootstrap) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in decision["comparisons"].items():
        lines.append(
            f"| {'**' + name + '**' if name == chosen else name} | {c['mean']:.4f} | "
            f"{_points(c['difference'])} | {c['standard_error'] * 100:.2f} | "
            f"{c['p_value']:.3f} | {decision['reselection_rate'][name]:.2f} |"
        )
    return lines


def _share(value: float | None) -> str:
    return (
        "none (no gap: the control is as good as the teacher)" if value is None else f"{value:.2f}"
    )


def _write_report(bench: Bench) -> None:
    """JSON and markdown of everything measured so far."""
    report = bench.report
    write_json(bench.out / "distill_quality.json", report)
    p = report["protocol"]
    lines = [
        "# Distillation quality",
        "",
        f"Teacher {report['teacher_parameters']:,} parameters, student "
        f"{report['student_parameters']:,} ({report['compression_ratio']:.0f}x smaller). "
        f"Units: {p['unit']}. Held-out: the unit's fold ({p['held_out_n_per_unit']} images, "
        f"{p['folds']} folds of the training and validation pool); test: the {p['test_n']} "
        "test images, never read to choose. Intervals: 95% Student t over units; SE in "
        "points. Rule: the best mean replaces the incumbent (`config`) only if its paired "
        "advantage is significant (one-sided p < 0.05).",
        "",
    ]
    pending = [n for n in PHASES if n not in report["phases_done"]]
    if pending:
        lines += [
            f"**Partial**: phases {', '.join(report['phases_done'])} done; "
            f"{', '.join(pending)} not yet run (the figures below are final for the phases "
            "done; the run goes on from the stored units).",
            "",
        ]
    if "teacher" in report:
        t = report["teacher"]
        lines += [
            f"## 1. Teacher recipe ({t['decision']['units']} units), judged by its student",
            "",
            *_decision_lines(t["decision"]),
            "",
            "| recipe | overrides | teacher held-out accuracy | teacher seconds (1 thread) | "
            f"student vs control ({t['control']}), points [95% CI] |",
            "|---|---|---:|---:|---:|",
            *(
                f"| {n} | {' '.join(o) or '(the config)'} | "
                f"{t['teachers_held_out_accuracy'][n]:.4f} | {t['teacher_seconds'][n]:.0f} | "
                f"{_points(t['students'][n]['vs_control'])} |"
                for n, o in t["candidates"].items()
            ),
            "",
        ]
    if "method" in report:
        m = report["method"]
        lines += [
            f"## 2. Method ({m['decision']['units']} units)",
            "",
            *_decision_lines(m["decision"]),
            "",
            "| method | overrides | vs its control, points [95% CI] | control |",
            "|---|---|---:|---|",
            *(
                f"| {n} | {' '.join(o) or '(the config)'} | "
                f"{_points(m['students'][n]['vs_control'])} | {m['students'][n]['control']} |"
                for n, o in m["candidates"].items()
            ),
            "",
        ]
    if "patience" in report:
        pa = report["patience"]
        costs = pa["costs_per_unit_seconds"]
        lines += [
            f"## 3. Patience ({pa['units']} units)",
            "",
            "![patience](patience.png)",
            "",
            f"Cost rates ({costs['source']}): teacher {costs['teacher_epoch']:.1f} s/epoch, "
            f"cache {costs['cache_view']:.2f} s/view, student {costs['student_epoch']:.2f} "
            "s/epoch. "
            "A budget fits the default run when its training and cache cost no more than the "
            f"incumbent default's ({pa['incumbent_run_cost_seconds']:.0f} s: its teacher, "
            "cache, student and four controls).",
            "",
            "| epochs | views | distilled, held-out | control, held-out | KD - control held-out, "
            "points | KD - control test, points | student s | run cost s | fits |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            *(
                f"| {c['epochs']} | {c['views']} | {_accuracy(c['kd_held_out'])} | "
                f"{_accuracy(c['control_held_out'])} | {_points(c['kd_vs_control_held_out'])} | "
                f"{_points(c['kd_vs_control_test'])} | {c['student_seconds']:.0f} | "
                f"{c['run_cost_seconds']:.0f} | {'yes' if c['fits_default_run'] else 'no'} |"
                for c in pa["grid"]
            ),
            "",
            "Default budget (among those that fit):",
            "",
            *_decision_lines(pa["default_decision"]),
            "",
            "Patient budget (any cost):",
            "",
            *_decision_lines(pa["patient_decision"]),
            "",
        ]
    if "control" in report:
        c = report["control"]
        lines += [
            f"## 4. The control's recipe ({c['units']} units): **{c['chosen']}**",
            "",
            "| candidate | held-out accuracy (mean) | vs the chosen, points [95% CI] | "
            "picked again |",
            "|---|---:|---:|---:|",
            *(
                f"| {n} | {r['held_out_accuracy_mean']:.4f} | {_points(r['vs_control'])} | "
                f"{c['reselection_rate'][n]:.2f} |"
                for n, r in c["candidates"].items()
            ),
            "",
            f"The default against it on held-out folds: {_points(c['default_vs_control_held_out'])}"
            f" points (SE {c['default_vs_control_held_out_standard_error'] * 100:.2f}).",
            "",
        ]
    if "default" in report:
        d = report["default"]
        interval = d["gap_closed_interval"]
        lines += [
            f"## 5. The default on test ({d['units']} units, n = {d['test_n']} test images each)",
            "",
            f"Teacher {' '.join(d['teacher']) or '(config)'}; method "
            f"{' '.join(d['method']) or '(config)'}; budget {' '.join(d['budget'])}; control "
            f"{d['control']}.",
            "",
            "| model | test accuracy, mean over units [95% CI] |",
            "|---|---:|",
            f"| teacher | {_accuracy(d['teacher_test_accuracy'])} |",
            f"| control | {_accuracy(d['control_test_accuracy'])} |",
            f"| distilled | {_accuracy(d['kd_test_accuracy'])} |",
            "",
            f"Distilled - control: {_points(d['kd_vs_control_test'])} points "
            f"(`default_vs_control_ci_low` {report['default_vs_control_ci_low'] * 100:+.2f}). "
            f"Gap closed: **{_share(report['gap_closed_by_default'])}**"
            + (
                f" (bootstrap over units [{interval[0]:.2f}, {interval[1]:.2f}])"
                if interval
                else ""
            )
            + f"; goal {GOAL_GAP_CLOSED:.2f}. Error reduction against the control: "
            f"{report['kd_error_reduction_vs_best_baseline']:.3f}.",
            "",
            "The test images are the same 500 for every unit: the interval is over units "
            "(training randomness, data folds), and with n = 500 one image is 0.2 points.",
            "",
        ]
    write_text(bench.out / "distill_quality.md", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
