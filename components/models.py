"""Architectures by name, each built for a dataset's channel count, image size and classes.

- ``resnet_small``: a compact CIFAR-style ResNet teacher: three stages of one basic block at
  widths 32/64/128, about 0.3M parameters; works for 28x28 and 32x32 inputs.
- ``resnet20``, ``resnet56``, ``resnet8x4``, ``resnet32x4``, ``wrn_16_2``, ``wrn_40_2``: the
  CIFAR architectures of the KD literature, with its published parameter counts.
- ``cnn_small`` / ``cnn_tiny``: plain conv-BN-ReLU students, about 13k and 5k parameters.
- ``resnet18`` / ``mobilenet_v3_small``: torchvision's, with the stem adapted to small inputs
  (stride-1 3x3 first conv, no max-pool for ResNet) and the channel count of the data.
- ``torchvision:<name>``: any classification architecture of torchvision
  (``torchvision.models.get_model``, never with downloaded weights). As a student it gets the
  dataset's classes and a stem adapted to its channels and, below 64 px, its size (see
  ``adapt_stem``); ``native=True`` builds it exactly as torchvision does, for a teacher whose
  weights were trained that way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def residual_stages(
    block: Callable[[int, int, int], nn.Module],
    in_ch: int,
    widths: tuple[int, ...] | list[int],
    blocks: int,
) -> nn.Sequential:
    """``blocks`` blocks per stage at ``widths``; the first block of every stage after the
    first halves the resolution (stride 2), as in the CIFAR ResNets and Wide ResNets."""
    layers, prev = [], in_ch
    for stage, width in enumerate(widths):
        for i in range(blocks):
            layers.append(block(prev, width, 2 if stage > 0 and i == 0 else 1))
            prev = width
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (Sec. 4.2), as the KD literature builds it (CRD,
    Tian et al. 2020; DKD, Zhao et al. 2022): a 3x3 stem of ``filters[0]`` channels, three
    stages of ``blocks`` basic blocks at ``filters[1:]`` (strides 1, 2, 2), global average
    pool, linear head. resnet20/56 use filters (16, 16, 32, 64); the "x4" variants
    (resnet8x4, resnet32x4) use (32, 64, 128, 256).
    """

    def __init__(self, in_channels: int, num_classes: int, filters: tuple[int, ...], blocks: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, filters[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(filters[0]),
            nn.ReLU(inplace=True),
        )
        self.blocks = residual_stages(BasicBlock, filters[0], filters[1:], blocks)
        self.head = nn.Linear(filters[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))
        return self.head(features.mean(dim=(2, 3)))


class WideBlock(nn.Module):
    """Pre-activation basic block of Wide ResNets (Zagoruyko & Komodakis 2016)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-depth-k: (depth - 4) / 6 blocks per stage at widths 16k, 32k, 64k."""

    def __init__(self, in_channels: int, num_classes: int, depth: int, widen: int):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.blocks = residual_stages(WideBlock, widths[0], widths[1:], n)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(features.mean(dim=(2, 3)))


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True)]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers, each followed by 2x2 max-pool, then global average pool."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int]):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, a),
            nn.MaxPool2d(2),
            *_conv_bn_relu(a, b),
            nn.MaxPool2d(2),
            *_conv_bn_relu(b, c),
        )
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _resnet18(in_channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    # 28-32 px inputs: an ImageNet stem (7x7 stride 2 + max-pool) would leave 1x1 maps.
    model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _mobilenet_v3_small(in_channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small(weights=None, num_classes=num_classes)
    first = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, 1, 1, bias=False)
    return model


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet_small": lambda c, k: CifarResNet(c, k, (32, 32, 64, 128), blocks=1),
    "resnet20": lambda c, k: CifarResNet(c, k, (16, 16, 32, 64), blocks=3),
    "resnet56": lambda c, k: CifarResNet(c, k, (16, 16, 32, 64), blocks=9),
    "resnet8x4": lambda c, k: CifarResNet(c, k, (32, 64, 128, 256), blocks=1),
    "resnet32x4": lambda c, k: CifarResNet(c, k, (32, 64, 128, 256), blocks=5),
    "wrn_16_2": lambda c, k: WideResNet(c, k, depth=16, widen=2),
    "wrn_40_2": lambda c, k: WideResNet(c, k, depth=40, widen=2),
    "cnn_small": lambda c, k: SmallCNN(c, k, (16, 24, 40)),
    "cnn_tiny": lambda c, k: SmallCNN(c, k, (8, 16, 24)),
    "resnet18": _resnet18,
    "mobilenet_v3_small": _mobilenet_v3_small,
}


TORCHVISION = "torchvision:"


def torchvision_names() -> list[str]:
    """The classification architectures torchvision can build."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def adapt_stem(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    """Fit an ImageNet-style network to other inputs: its first convolution takes
    ``in_channels``, and for images under 64 px that convolution keeps the resolution
    (stride 1) and a max-pool right after the stem is dropped, so that a 28-32 px image is not
    reduced to 1x1 maps before the first stage."""
    small = image_size < 64
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError("no convolution to adapt: not an image classifier of the usual shape")
    replacement = nn.Conv2d(
        in_channels,
        first.out_channels,
        first.kernel_size,  # type: ignore[arg-type]
        stride=1 if small else first.stride,  # type: ignore[arg-type]
        padding=first.padding,  # type: ignore[arg-type]
        bias=first.bias is not None,
    )
    _replace(model, first, replacement)
    if small and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


def _replace(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return


def build_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: int = 32,
    native: bool = False,
) -> nn.Module:
    """An architecture by name, for inputs of ``in_channels`` x ``image_size`` and
    ``num_classes`` outputs. ``native``: a torchvision architecture exactly as torchvision
    builds it (3 input channels, its own stem), only its class count set."""
    if name.startswith(TORCHVISION):
        from torchvision import models

        arch = name.removeprefix(TORCHVISION)
        if arch not in torchvision_names():
            raise ValueError(f"unknown torchvision architecture {arch!r}")
        model = models.get_model(arch, weights=None, num_classes=num_classes)
        return model if native else adapt_stem(model, in_channels, image_size)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](in_channels, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
