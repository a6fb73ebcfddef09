"""The control recipe ``kd choose-control`` chose for a dataset and a student, recorded in the
work dir, and found again by every later run on the same data and student: ``kd run``, a
sweep, and the scheduled runs of ``kd serve`` (which load their config themselves)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from components.config import PipelineConfig, control_scope, load_config, read_yaml
from components.io import sha256_json


def control_record(config: PipelineConfig) -> Path:
    """Where ``kd choose-control`` records its choice for this config's data and student."""
    return config.work_dir / "control-choices" / f"{sha256_json(control_scope(config))[:16]}.json"


def with_recorded_control(
    config: PipelineConfig, path: Path | None, overrides: Sequence[str]
) -> PipelineConfig:
    """The config with the control recipe ``kd choose-control`` recorded for its data and
    student, unless the YAML file or an override sets ``student.baseline`` itself."""
    record = control_record(config)
    if not record.is_file():
        return config
    tree = read_yaml(path) if path is not None else {}
    if "baseline" in (tree.get("student") or {}) or any(
        o.startswith(("student.baseline", "student=", "student.baseline=")) for o in overrides
    ):
        return config
    try:
        chosen = json.loads(record.read_text())
        chosen_by = (
            f"kd choose-control, {chosen['created']}, over {chosen['units']} held-out folds "
            f"({record})"
        )
        choice = [
            f"student.baseline.views={chosen['views']}",
            f"student.baseline.label_smoothing={float(chosen['label_smoothing'])}",
            f"student.baseline.chosen_by={json.dumps(chosen_by)}",  # YAML reads JSON strings
        ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(
            f"{record}: an unreadable control choice ({err!r}); the configured control is "
            "trained (kd choose-control records a new one)",
            stacklevel=2,
        )
        return config
    return load_config(path, [*choice, *overrides])
