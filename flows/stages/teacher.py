"""``teacher``: train the teacher here, or bring in the one you already have.

``teacher.source`` says which; each source is one module of components/teacher_sources/
(train here with the teacher recipe, a checkpoint, torchvision weights, an ONNX file, a model
MLflow resolves), which this stage asks, never matching on the kind.

A teacher from elsewhere is trained by nobody here: the stage copies or converts it into its
folder (sha256 recorded), resolves its input recipe and class map against the data, evaluates
it on validation and test through them, and hands on the reference the cache reads. The
fingerprint includes the source's content (file sha256, or the registry version an alias
points at now), so a new teacher version invalidates exactly the cache and what depends on it.

A teacher trained here is kept when ``teacher.retrain`` is ``never``: every training records
itself in ``work_dir/teacher/last-trained.json``, and a later run with the same model and
recipe brings that checkpoint in (byte for byte), feeds it the statistics of the data it
learned on (not the new data's: so it sees what it was trained to see, and the logit cache
reuses its outputs on every image it already ran on) and evaluates it on the run's splits
instead of training a new one, whatever the data became. ``always`` retrains it on every run
(flows/pipeline.py forces the stage).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from components.config import CheckpointTeacher, PipelineConfig, TeacherSource
from components.data_sources import DataError, source_sample, source_signature
from components.devices import place, resolve_device
from components.io import sha256_file, sha256_files, write_json
from components.recipes import Recipe, teacher_recipe
from components.teacher_sources import source_of
from components.teachers import (
    InputSpec,
    TeacherError,
    TeacherView,
    class_index,
    load_teacher,
    output_count,
    parameter_count,
    teacher_accuracy,
)
from flows.refs import DataRef, ModelRef
from flows.stage import Outcome, PreflightError, Record, StageContext
from flows.stages.training import TrainingStage
from flows.tracking import TrackingError, resolve_tracking_uri

LAST_TRAINED = "last-trained.json"  # under work_dir/teacher/: what teacher.retrain=never keeps


def _recipe_identity(config: PipelineConfig) -> dict[str, Any]:
    """What a kept teacher must share with the config: its architecture and training recipe."""
    return config.teacher.model_dump(mode="json", include={"model", "train"})


class Teacher(TrainingStage):
    name = "teacher"
    # The device and the process count change a trained teacher's weights (kernels,
    # per-process BatchNorm).
    reads = ("teacher", "seed", "device", "distributed")
    needs = ("prepare-data",)

    def recipe(self, config: PipelineConfig) -> Recipe:
        return teacher_recipe(config)

    def environment(self, config: PipelineConfig) -> dict[str, Any]:
        kept = self.kept(config, Path(config.work_dir))
        if kept is not None:
            return {"kept": kept["sha256"]}
        from flows.tracking.models import LazyModelLoader  # loads MLflow: see preflight

        source = config.teacher.source
        return source_of(source).identity(source, LazyModelLoader(resolve_tracking_uri()))

    @staticmethod
    def kept(config: PipelineConfig, work_dir: Path) -> dict[str, Any] | None:
        """The last teacher trained in this work dir, when ``teacher.retrain`` is ``never`` and
        it was trained with this model and recipe; None otherwise (a teacher is trained)."""
        teacher = config.teacher
        if teacher.retrain != "never" or not source_of(teacher.source).trained_here:
            return None
        record = work_dir / "teacher" / LAST_TRAINED
        if not record.is_file():
            return None
        last = json.loads(record.read_text())
        checkpoint = work_dir / last["checkpoint"]
        if last["teacher"] != _recipe_identity(config) or not checkpoint.is_file():
            return None
        return {**last, "path": str(checkpoint)}

    def preflight(self, config: PipelineConfig) -> None:
        teacher = config.teacher
        if source_of(teacher.source).trained_here:
            super().preflight(config)
            return
        # Bring the teacher into a scratch folder and check it against the data, as the run
        # will: a missing file, a URI that does not resolve, weights of another architecture,
        # classes that do not match, all stop here.
        classes, channels, size = source_signature(config.data)
        recipe = teacher.input
        spec = InputSpec(
            recipe.channels or channels,
            (recipe.image_size or size,) * 2,
            recipe.mean or (0.5,) * (recipe.channels or channels),
            recipe.std or (0.25,) * (recipe.channels or channels),
        )
        # Here, not at the top: a teacher trained here needs no model store, and the checks
        # run before MLflow is loaded.
        from flows.tracking.models import LazyModelLoader

        with tempfile.TemporaryDirectory() as scratch:
            try:
                models = LazyModelLoader(resolve_tracking_uri())
                brought = source_of(teacher.source).bring_in(
                    teacher.source, spec, Path(scratch), models
                )
                model = load_teacher(brought.path, brought.format)
                # one of the data's own images, through the input recipe the run will use
                sample = torch.as_tensor(source_sample(config.data))
                outputs = output_count(model, spec, sample)
                class_index(
                    classes, teacher.classes or brought.class_names, outputs, teacher.class_map
                )
            except (TeacherError, TrackingError, DataError) as err:
                raise PreflightError(f"teacher.source ({teacher.source.kind}): {err}") from None

    def run(self, ctx: StageContext) -> Outcome[ModelRef]:
        if not source_of(ctx.config.teacher.source).trained_here:
            return self.bring(ctx, ctx.config.teacher.source)
        kept = self.kept(ctx.config, ctx.work_dir)
        if kept is not None:
            if sha256_file(Path(kept["path"])) != kept["sha256"]:
                raise TeacherError(f"the kept teacher {kept['path']} changed since it was trained")
            ctx.log.info(
                "teacher.retrain=never: keeping the teacher trained in run %s on data %s",
                kept["run_id"],
                kept["dataset_fingerprint"],
            )
            # Fed as it learned: the statistics of the data it was trained on, not the new
            # data's (and so its cached outputs on images it has seen stay reusable).
            learned = InputSpec.from_dict(kept["input"]) if "input" in kept else None
            outcome = self.bring(ctx, CheckpointTeacher(path=Path(kept["path"])), learned)
            outcome.record.tags["teacher_kept_from_run"] = kept["run_id"]
            return outcome
        outcome = super().run(ctx)
        ref = outcome.ref
        data = ctx.input("prepare-data", DataRef)
        write_json(
            ctx.work_dir / "teacher" / LAST_TRAINED,
            {
                "checkpoint": ref.checkpoint,
                "sha256": ref.sha256,
                "teacher": _recipe_identity(ctx.config),
                "dataset_fingerprint": data.fingerprint,
                "input": InputSpec.of_data(data.load(ctx.work_dir).info).as_dict(),
                "run_id": ctx.run_id,
            },
        )
        return outcome

    def bring(
        self, ctx: StageContext, source_config: TeacherSource, spec: InputSpec | None = None
    ) -> Outcome[ModelRef]:
        """A teacher from elsewhere (or kept): copied or converted, checked, evaluated; never
        trained. ``spec``: its input recipe (default: ``teacher.input`` over the data's)."""
        teacher = ctx.config.teacher
        data = ctx.input("prepare-data", DataRef)
        dataset = data.load(ctx.work_dir)
        spec = spec or InputSpec.resolve(teacher.input, dataset.info)
        ctx.directory.mkdir(parents=True, exist_ok=True)
        source = source_of(source_config)
        brought = source.bring_in(source_config, spec, ctx.directory, ctx.tracker.models)
        path, kind = brought.path, brought.format
        model = load_teacher(path, kind)
        index = class_index(
            dataset.info.class_names,
            teacher.classes or brought.class_names,
            output_count(model, spec),
            teacher.class_map,
        )
        # ONNX Runtime runs on the CPU here; PyTorch teachers on the configured device.
        device = resolve_device(ctx.config.device) if kind != "onnx" else torch.device("cpu")
        view = TeacherView(place(model, device).eval(), spec, index)
        metrics = {
            **teacher_accuracy(view, dataset, "val", device),
            **teacher_accuracy(view, dataset, "test", device),
        }
        history = write_json(ctx.directory / "history.json", [])  # trained elsewhere
        files = [path, *brought.extra_files]  # an ONNX model's external data with it
        sha256, size = sha256_files(files), sum(f.stat().st_size for f in files)
        parameters = parameter_count(model, path, kind)
        arch = source.describe(source_config, brought)
        ctx.log.info(
            "teacher from %s (%s, %d parameters, sha256 %s): input %s; test accuracy %.4f",
            brought.origin,
            kind,
            parameters,
            sha256[:12],
            spec.describe(),
            metrics["test_accuracy"],
        )
        record = Record(
            params={
                "model.name": arch,
                "model.parameters": parameters,
                "model.format": kind,
                "model.runtime": "onnxruntime" if kind == "onnx" else "pytorch",
                "teacher.origin": brought.origin,
                "teacher.input_recipe": spec.describe(),
                "teacher.class_index": index if index is not None else "identity",
                "dataset.fingerprint": data.fingerprint,
            },
            metrics={**metrics, "checkpoint_bytes": size},
            tags={"checkpoint_sha256": sha256, "teacher_source": source_config.kind},
            files=[(f, "checkpoint") for f in files],
        )
        ref = ModelRef(
            arch=arch,
            checkpoint=ctx.relative(path),
            sha256=sha256,
            history=ctx.relative(history),
            parameters=parameters,
            size_bytes=size,
            test_accuracy=metrics["test_accuracy"],
            val_accuracy=metrics["val_accuracy"],
            format=kind,
            # the data's own recipe is no recipe of its own: the cache is then the one a
            # trained teacher of the same bytes has
            input_spec=None if spec == InputSpec.of_data(dataset.info) else spec.as_dict(),
            class_index=index,
            extra_files=tuple(ctx.relative(f) for f in brought.extra_files),
        )
        return Outcome(ref, record)
