"""What the three training stages share: the stage body that trains a recipe and keeps its
checkpoint and history, the per-epoch report, and the pre-flight check of the architecture.

``teacher``, ``student-baseline`` and ``student-kd`` each say which recipe they train
(components/recipes.py) and whether the teacher's cached logits are learnt from
(``teacher_logits``); the teacher stage also brings in teachers from elsewhere.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from components.checkpoint import save_checkpoint
from components.data_sources import source_signature
from components.devices import resolve_device
from components.io import write_json
from components.models import build_model, count_parameters
from components.recipes import Recipe, fit
from flows.refs import DataRef, ModelRef
from flows.stage import (
    Outcome,
    PreflightError,
    Record,
    Stage,
    StageContext,
    Variant,
)

if TYPE_CHECKING:
    # Only for the annotation: a launched training process that unpickles an EpochReport
    # imports MLflow only when its rank logs.
    from flows.tracking.runs import MetricSink


class EpochReport:
    """Each epoch's metrics to the stage's MLflow run, and one line to the log. Picklable: in
    a launched process (rank 0) the line goes to that process's console instead."""

    def __init__(
        self,
        sink: MetricSink,
        name: str,
        epochs: int,
        log: logging.Logger | logging.LoggerAdapter[Any] | None,
    ) -> None:
        self.sink, self.name, self.epochs, self.log = sink, name, epochs, log

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "log": None}

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        self.sink.log(metrics, step=epoch)
        (self.log or logging.getLogger("kd.train")).info(
            "%s epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f",
            self.name,
            epoch,
            self.epochs,
            metrics["train_loss"],
            metrics["train_accuracy"],
            metrics["val_loss"],
            metrics["val_accuracy"],
        )


class TrainingStage(Stage[ModelRef]):
    """Train ``recipe(config)`` on the prepared data; keep the checkpoint and its history."""

    output = ModelRef
    splits = ("train", "val", "test")
    variants = (Variant("{run}", "pytorch", accuracy="test_accuracy", size="checkpoint_bytes"),)

    def recipe(self, config: Any) -> Recipe:
        raise NotImplementedError

    def preflight(self, config: Any) -> None:
        """The architecture must take the data's images: one forward pass of a blank batch."""
        import torch

        recipe = self.recipe(config)
        _, channels, size = source_signature(config.data)
        try:
            model = build_model(recipe.arch, channels, 2, size).eval()
            with torch.no_grad():
                model(torch.zeros(2, channels, size, size))
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise PreflightError(
                f"{self.name}: {recipe.arch} does not take {channels}x{size}x{size} images "
                f"({reason})"
            ) from None

    def teacher_logits(self, ctx: StageContext) -> tuple[Any | None, dict[str, Any]]:
        """The teacher's logits to learn from (None: labels only), and params saying which."""
        return None, {}

    def run(self, ctx: StageContext) -> Outcome[ModelRef]:
        data = ctx.input("prepare-data", DataRef)
        dataset = data.load(ctx.work_dir)
        teacher_logits, params = self.teacher_logits(ctx)
        device = resolve_device(ctx.config.device)
        nproc = ctx.config.distributed.nproc
        checkpoint = ctx.directory / "model.pt"
        if nproc > 1:
            ctx.log.info(
                "%s: training in %d processes (DistributedDataParallel)", ctx.run_name, nproc
            )
        recipe = self.recipe(ctx.config)
        state_path = ctx.directory / "train_state.pt"
        if state_path.is_file():
            ctx.log.info("%s: resuming from the training state in %s", ctx.run_name, state_path)
        report = EpochReport(ctx.metrics(), ctx.run_name, recipe.train.epochs, ctx.log)
        model, result = fit(
            recipe,
            dataset,
            device,
            teacher_logits=teacher_logits,
            nproc=nproc,
            on_epoch=report,
            state_path=state_path,
            desc=ctx.run_name,
        )
        history = write_json(checkpoint.with_name("history.json"), result.history)
        sha256 = save_checkpoint(
            checkpoint,
            model,
            arch=recipe.arch,
            in_channels=dataset.info.in_channels,
            num_classes=dataset.info.num_classes,
            image_size=min(dataset.info.image_size),
            class_names=dataset.info.class_names,
            config=ctx.declared_config(),
            metrics=result.final,
            dataset_fingerprint=data.fingerprint,
        )
        # The checkpoint supersedes the training state (a forced rerun must start over).
        state_path.unlink(missing_ok=True)
        tags: dict[str, Any] = {"checkpoint_sha256": sha256}
        if result.resumed_from_epoch:
            tags["resumed_from_epoch"] = result.resumed_from_epoch
            ctx.log.info("%s: resumed after epoch %d", ctx.run_name, result.resumed_from_epoch)
        size = checkpoint.stat().st_size
        parameters = count_parameters(model)
        ctx.log.info("%s: test accuracy %.4f", ctx.run_name, result.final["test_accuracy"])
        # val_* of the last epoch is already logged at its step; add the test figures.
        test_metrics = {k: v for k, v in result.final.items() if k.startswith("test_")}
        test_metrics["final_val_accuracy"] = result.final["val_accuracy"]
        record = Record(
            params={
                "model.name": recipe.arch,
                "model.parameters": parameters,
                "torch.device": str(device),
                "dataset.fingerprint": data.fingerprint,
                "views": "cached" if recipe.view_pool else "fresh",
                "label_smoothing": recipe.train.label_smoothing,
                **params,
            },
            metrics={**test_metrics, "checkpoint_bytes": size},
            step=recipe.train.epochs,
            tags=tags,
            files=[(checkpoint, "checkpoint"), (history, "checkpoint")],
            # An MLflow model too, named after the stage (runs:/<id>/<stage name>).
            model=(model.cpu().eval(), dataset.info.in_channels, dataset.info.image_size),
        )
        ref = ModelRef(
            arch=recipe.arch,
            checkpoint=ctx.relative(checkpoint),
            sha256=sha256,
            history=ctx.relative(history),
            parameters=parameters,
            size_bytes=size,
            test_accuracy=result.final["test_accuracy"],
            val_accuracy=result.final["val_accuracy"],
        )
        return Outcome(ref, record)
