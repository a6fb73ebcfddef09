"""The stages, one module each, and ``PIPELINE``: their order, in one place.

The CLI, the reports, the sweep and the tests read the stage list from here;
flows/pipeline.py runs it as Prefect flows. Importing it loads neither Prefect nor MLflow:
the pre-flight checks run every stage's ``preflight`` before either is imported.
"""

from __future__ import annotations

from typing import Any

from flows.stage import Stage
from flows.stages.benchmark import Benchmark
from flows.stages.handoff import Handoff
from flows.stages.logit_cache import LogitCacheStage
from flows.stages.onnx_export import OnnxExport
from flows.stages.prepare_data import PrepareData
from flows.stages.promotion import Promotion
from flows.stages.report import Report
from flows.stages.student_baseline import StudentBaseline
from flows.stages.student_kd import StudentKD
from flows.stages.teacher import Teacher

PIPELINE: tuple[Stage[Any], ...] = (
    PrepareData(),
    Teacher(),
    LogitCacheStage(),
    StudentBaseline(),
    StudentKD(),
    OnnxExport(),
    Benchmark(),
    Handoff(),
    Promotion(),
    Report(),
)
