"""The CIFAR ResNets of the CRD / RepDistiller benchmark (resnet8 ... resnet110, resnet8x4, resnet32x4).

Module names and shapes follow RepDistiller's `models/resnet.py` exactly, so its published teacher checkpoints
load with strict=True. Only the final pooling differs: adaptive instead of a fixed 8x8 window, which is the
same on 32x32 CIFAR inputs and also works on the 28x28 (and smaller) inputs of the demo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pekd.models.init import init_weights


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; the shortcut is a strided 1x1 conv + BN when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """conv-bn-relu stem, three stages (depth 6n+2, strides 1, 2, 2), global average pool, linear classifier.

    `widths` is (stem, stage1, stage2, stage3); the "x4" variants only widen these.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int,
                 in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.num_classes = num_classes
        self.feature_dim = widths[3]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = _stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = _stage(widths[2], widths[3], blocks, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, feature_dim], logits [B, num_classes])."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        feat = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return feat, self.fc(feat)


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes, in_chans)


def resnet14(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes, in_chans)


def resnet20(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes, in_chans)


def resnet32(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes, in_chans)


def resnet44(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes, in_chans)


def resnet56(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes, in_chans)


def resnet110(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes, in_chans)


def resnet8x4(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes, in_chans)


def resnet32x4(num_classes: int, in_chans: int = 3) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes, in_chans)
