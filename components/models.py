"""Architectures by name, each built for a dataset's channel count, image size and classes.

- ``resnet_small``: a compact ResNet (He et al. 2016) teacher: three stages of one basic block
  at widths 32/64/128, about 0.3M parameters; works for 28x28 and 32x32 inputs.
- ``cnn_small`` / ``cnn_tiny``: plain conv-BN-ReLU students, about 13k and 5k parameters.
- ``resnet18`` / ``mobilenet_v3_small``: torchvision's, with the stem adapted to small inputs
  (stride-1 3x3 first conv, no max-pool for ResNet) and the channel count of the data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from components.config import ArchName


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


class ResNetSmall(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks, prev = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(prev, width, stride=1 if i == 0 else 2))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))
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
    "resnet_small": lambda c, k: ResNetSmall(c, k),
    "cnn_small": lambda c, k: SmallCNN(c, k, (16, 24, 40)),
    "cnn_tiny": lambda c, k: SmallCNN(c, k, (8, 16, 24)),
    "resnet18": _resnet18,
    "mobilenet_v3_small": _mobilenet_v3_small,
}


def build_model(name: ArchName, in_channels: int, num_classes: int) -> nn.Module:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](in_channels, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
