"""``prepare-data``: read the source, split it, fingerprint it, store it once as uint8 arrays.

Each image's split follows from its bytes (``split.method: content``), so data that grows
moves no image already there between splits.

Not cached by Prefect: it runs every time, because only reading the source tells whether the
data changed. The arrays are content-addressed (``prepare-data/<dataset fingerprint>/``), so
unchanged data is stored once and every later stage keys on the same fingerprint.
"""

from __future__ import annotations

from pathlib import Path

from components.config import PipelineConfig
from components.data import prepare_dataset, split_version
from components.data_sources import DataError, check_source
from flows.refs import DataRef
from flows.stage import Outcome, PreflightError, Record, Stage, StageContext


class PrepareData(Stage[DataRef]):
    name = "prepare-data"
    splits = ("train", "val", "test")
    output = DataRef
    reads = ("data", "split")
    cached = False

    def preflight(self, config: PipelineConfig) -> None:
        try:
            check_source(config.data)
        except DataError as err:
            raise PreflightError(str(err)) from None

    def run(self, ctx: StageContext) -> Outcome[DataRef]:
        info = prepare_dataset(ctx.config.data, ctx.config.split, ctx.root)
        ctx.log.info(
            "dataset %s: %s images per split, fingerprint %s",
            ctx.config.data.kind,
            info.split_sizes,
            info.fingerprint,
        )
        params = {
            "dataset.fingerprint": info.fingerprint,
            "dataset.num_classes": info.num_classes,
            "dataset.input_shape": [info.in_channels, *info.image_size],
            **{f"dataset.{name}_size": n for name, n in info.split_sizes.items()},
        }
        # Which images are validation images: the version promotion's chains are kept by.
        tags = {
            "dataset_fingerprint": info.fingerprint,
            "split_version": split_version(ctx.config.split),
        }
        ref = DataRef(
            directory=ctx.relative(Path(info.path)),
            fingerprint=info.fingerprint,
            split_sizes=info.split_sizes,
        )
        metrics = {f"{name}_images": float(n) for name, n in info.split_sizes.items()}
        record = Record(params=params, metrics=metrics, tags=tags)
        return Outcome(ref, record, parent=Record(params=params, tags=tags))
