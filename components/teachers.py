"""Teachers from anywhere, as the logit cache sees them.

A teacher trained elsewhere arrives as a PyTorch file (a checkpoint of this pipeline, or a
plain ``state_dict`` of a named architecture), a torchvision architecture with local weights,
an exported program (``torch.export``: what an MLflow PyTorch model becomes here), or an ONNX
file run by ONNX Runtime. ``TeacherView`` puts any of them behind one call: the augmented view
the student sees (uint8 pixels, or float in [0, 255] when mixed) goes through the teacher's
own input recipe (channels, size, normalisation), the model, and the class map, so the cache
holds logits over the dataset's classes, in the dataset's order.

Left out on purpose: feature (intermediate-layer) distillation, which would need the teacher
to be a PyTorch module of known structure; every source here gives logits only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.config import InputRecipe
from components.data import Dataset, DatasetInfo, standardize_pixels

TeacherFormat = Literal["checkpoint", "exported", "onnx"]
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")


class TeacherError(ValueError):
    """A teacher that cannot be loaded or does not fit the data; the message names both."""


@dataclass(frozen=True)
class InputSpec:
    """A resolved input recipe: what the model is fed, every field set."""

    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of_data(cls, info: DatasetInfo) -> InputSpec:
        return cls(info.in_channels, info.image_size, tuple(info.mean), tuple(info.std))

    @classmethod
    def resolve(cls, recipe: InputRecipe, info: DatasetInfo) -> InputSpec:
        """The recipe, with every unset field taken from the data (its size, channels and
        training-split statistics); the statistics of other channels must be given."""
        channels = recipe.channels or info.in_channels
        size = (recipe.image_size,) * 2 if recipe.image_size else info.image_size
        if recipe.mean is not None and recipe.std is not None:
            mean, std = tuple(recipe.mean), tuple(recipe.std)
        elif channels == info.in_channels:
            mean, std = tuple(info.mean), tuple(info.std)
        else:
            raise TeacherError(
                f"teacher.input: {channels} channels for data with {info.in_channels}: give "
                "teacher.input.mean and .std (the statistics the teacher was trained with)"
            )
        if len(mean) != channels or len(std) != channels:
            raise TeacherError(
                f"teacher.input: mean and std need {channels} values, got {len(mean)}, {len(std)}"
            )
        return cls(channels, (int(size[0]), int(size[1])), mean, std)

    def as_dict(self) -> dict[str, Any]:
        """JSON-plain (lists, not tuples): compares equal to itself read back from a file."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> InputSpec:
        return cls(
            int(value["channels"]),
            (int(value["image_size"][0]), int(value["image_size"][1])),
            tuple(value["mean"]),
            tuple(value["std"]),
        )

    def describe(self) -> str:
        return (
            f"{self.channels}x{self.image_size[0]}x{self.image_size[1]}, "
            f"(pixel / 255 - {list(self.mean)}) / {list(self.std)}"
        )


def prepare(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Views in [0, 255] (N, C, H, W) -> the model's input: channels converted, resized
    (bilinear), standardised. With the data's own recipe this is exactly ``normalize``."""
    x = pixels
    if x.shape[1] != spec.channels:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, spec.channels, -1, -1)
        else:
            weights = torch.tensor(LUMINANCE, device=x.device).view(1, 3, 1, 1)
            x = (x * weights).sum(1, keepdim=True)
    if tuple(x.shape[-2:]) != spec.image_size:
        x = F.interpolate(x.float(), size=spec.image_size, mode="bilinear", align_corners=False)
    return standardize_pixels(x, spec.mean, spec.std)


class OnnxModule(nn.Module):
    """An ONNX model run by ONNX Runtime behind ``nn.Module``'s call (inputs and outputs are
    CPU tensors). Picklable: each process opens its own session."""

    def __init__(self, path: Path, spin: bool = False) -> None:
        """``spin``: a session whose threads (as many as PyTorch's) spin between calls, for
        back-to-back batches with nothing else to run (about 5% faster here); otherwise they
        sleep, leaving the cores to whatever runs between calls."""
        super().__init__()
        self.path, self.spin = str(path), spin
        self._session: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_session": None}

    def session(self) -> Any:
        if self._session is None:
            from components.onnx_export import onnx_session

            threads = torch.get_num_threads() if self.spin else None
            self._session = onnx_session(self.path, threads)
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (float32) for a batch of any size: the model's own input name and type
        (float16 models are fed float16), and a model exported with a fixed batch size
        (``torch.onnx.export``'s default) run on slices of that size, the last one padded."""
        session = self.session()
        first = session.get_inputs()[0]
        dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        batch = x.detach().cpu().contiguous().numpy().astype(dtype)
        fixed = first.shape[0] if isinstance(first.shape[0], int) and first.shape[0] > 0 else None
        step = fixed or max(len(batch), 1)
        outputs = []
        for start in range(0, len(batch), step):
            part = batch[start : start + step]
            short = step - len(part) if fixed else 0
            if short:
                part = np.concatenate([part, np.repeat(part[-1:], short, axis=0)])
            out = session.run(None, {first.name: part})[0]
            outputs.append(out[: len(out) - short].astype(np.float32))
        if not outputs:
            return torch.empty(0)
        return torch.from_numpy(np.concatenate(outputs))


class Exported(nn.Module):
    """An exported program's module, which refuses ``train()`` and ``eval()`` (it has no
    training mode): held outside the module tree for those, moved with it by ``to()``."""

    program: nn.Module

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "program", program)  # not a registered child

    def train(self, mode: bool = True) -> Exported:
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> Exported:
        self.program._apply(fn, recurse)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


class TeacherView(nn.Module):
    """A teacher as the cache and the evaluation see it: views in [0, 255] -> logits over the
    dataset's classes, through its own input recipe and class map."""

    def __init__(
        self, model: nn.Module, spec: InputSpec, class_index: Sequence[int] | None
    ) -> None:
        super().__init__()
        self.model, self.spec = model, spec
        self.class_index = list(class_index) if class_index is not None else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.model(prepare(pixels, self.spec))
        return logits if self.class_index is None else logits[:, self.class_index]


TWIN_OPSET = 18
# ONNX Runtime's logits against PyTorch's for the same teacher: float32 kernels that add in
# another order, ~1e-6 here; a twin further off than this is refused, not cached.
TWIN_TOLERANCE = 1e-3


def onnx_twin(view: TeacherView, path: Path, pixels: torch.Tensor) -> tuple[TeacherView, float]:
    """The same teacher run by ONNX Runtime: ``view`` exported whole to ``path`` (input
    recipe, model and class map, so no PyTorch op runs between its batches; batch dimension
    dynamic). Returns it and the largest |logit difference| from PyTorch on ``pixels`` (a
    batch of views), which must be within ``TWIN_TOLERANCE`` (relative to the logits' scale,
    at least 1)."""
    from components.io import atomic_path
    from components.onnx_export import export_graph

    if isinstance(view.model, OnnxModule) or isinstance(view, OnnxTeacherView):
        return view, 0.0
    view = view.eval()
    if next(view.parameters(), torch.empty(0)).device.type != "cpu":
        view = copy.deepcopy(view).cpu()
    example = pixels[:2].cpu().float()
    with atomic_path(path) as tmp:
        try:  # the tracing exporter: a fraction of a second, against seconds for dynamo's
            export_graph(view, example, tmp, TWIN_OPSET, dynamo=False)
        except Exception:  # a model it cannot trace; the parity check below guards both
            export_graph(view, example, tmp, TWIN_OPSET)
    twin = OnnxTeacherView(path, view.spec, view.class_index)
    with torch.no_grad():
        reference, produced = view(pixels.cpu()).float(), twin(pixels.cpu()).float()
    difference = float((reference - produced).abs().max())
    if not difference <= TWIN_TOLERANCE * max(1.0, float(reference.abs().max())):
        raise TeacherError(
            f"the teacher run by ONNX Runtime differs from PyTorch by {difference:.3g} on the "
            "same views: set cache.runtime=pytorch"
        )
    return twin, difference


class OnnxTeacherView(TeacherView):
    """A ``TeacherView`` exported whole and run by ONNX Runtime: views in [0, 255] in,
    logits over the dataset's classes out. Same recipe and class map as the original (what
    the cache spec checks); picklable, each process opens its own session."""

    def __init__(self, path: Path, spec: InputSpec, class_index: Sequence[int] | None) -> None:
        super().__init__(OnnxModule(path, spin=True), spec, class_index)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


def class_index(
    dataset_classes: Sequence[str],
    teacher_classes: Sequence[str] | None,
    outputs: int,
    class_map: Mapping[str, int | str] | None,
) -> list[int] | None:
    """For each dataset class, the teacher's output that scores it; None when they are the
    same classes in the same order. Raises ``TeacherError`` naming both class lists when
    they differ and no map says how they correspond."""
    dataset = list(dataset_classes)
    shown = list(teacher_classes) if teacher_classes is not None else f"{outputs} unnamed outputs"
    if class_map is None:
        if teacher_classes is not None and list(teacher_classes) == dataset:
            return None
        if teacher_classes is None and outputs == len(dataset):
            return None  # unnamed outputs, as many as classes: taken in the dataset's order
        raise TeacherError(
            f"the teacher's classes ({shown}) are not the dataset's ({dataset}): declare "
            "teacher.class_map (dataset class -> teacher class index or name)"
        )
    missing = [name for name in dataset if name not in class_map]
    if missing:
        raise TeacherError(f"teacher.class_map has no entry for dataset classes {missing}")
    index = []
    for name in dataset:
        target = class_map[name]
        if isinstance(target, str):
            if teacher_classes is None or target not in teacher_classes:
                raise TeacherError(
                    f"teacher.class_map: {name!r} -> {target!r}, not one of the teacher's "
                    f"classes {shown} (give teacher.classes, or an index)"
                )
            target = list(teacher_classes).index(target)
        if not 0 <= target < outputs:
            raise TeacherError(
                f"teacher.class_map: {name!r} -> {target}, outside the teacher's {outputs} outputs"
            )
        index.append(target)
    return index


def load_teacher(path: Path, kind: TeacherFormat) -> nn.Module:
    """A materialised teacher file (see the teacher stage) as a module in eval mode."""
    from components.checkpoint import load_checkpoint

    match kind:
        case "checkpoint":
            return load_checkpoint(path)[0]
        case "exported":
            return Exported(torch.export.load(str(path)).module())
        case "onnx":
            return OnnxModule(path).eval()


def output_count(model: nn.Module, spec: InputSpec, pixels: torch.Tensor | None = None) -> int:
    """How many logits the model gives, from one forward pass: of ``pixels`` (the data's
    own images, uint8 (N, C, H, W)) through the input recipe, or of a blank input of the
    recipe's shape. A model that cannot take that input is a ``TeacherError`` naming the
    keys that say what input the teacher was trained on."""
    if pixels is None:
        pixels = torch.zeros(2, spec.channels, *spec.image_size, dtype=torch.uint8)
    fed = f"{spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}"
    if isinstance(model, OnnxModule):
        try:  # a model ONNX Runtime cannot load is no question of its input
            model.session()
        except Exception as err:
            raise TeacherError(f"ONNX Runtime cannot load the teacher ({err})") from None
    try:
        with torch.no_grad():
            out = model(prepare(pixels, spec))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TeacherError(
            f"the teacher cannot take the data's images as {fed} ({reason[:200]}): set "
            "teacher.input (image_size, channels, mean, std) to the input it was trained on"
        ) from None
    if out.ndim != 2:
        raise TeacherError(f"the teacher gives outputs of shape {list(out.shape)}, not logits")
    return int(out.shape[1])


@torch.no_grad()
def teacher_accuracy(
    view: nn.Module, dataset: Dataset, split: str, device: torch.device, batch: int = 256
) -> dict[str, float]:
    """Loss and accuracy of a teacher (behind its view) on a split of the dataset."""
    images, labels = dataset.split(split)
    logits = []
    for start in range(0, len(images), batch):
        pixels = torch.as_tensor(np.asarray(images[start : start + batch])).to(device)
        logits.append(view(pixels).float().cpu())
    stacked = torch.cat(logits)
    targets = torch.as_tensor(labels)
    return {
        f"{split}_loss": F.cross_entropy(stacked, targets).item(),
        f"{split}_accuracy": (stacked.argmax(1) == targets).float().mean().item(),
    }


def parameter_count(model: nn.Module, path: Path, kind: TeacherFormat) -> int:
    """Parameters of a materialised teacher (an ONNX file's: its initialisers)."""
    if kind != "onnx":
        return sum(p.numel() for p in model.parameters())
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return int(sum(np.prod(t.dims) for t in graph.initializer))
