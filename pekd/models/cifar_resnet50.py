"""The CIFAR ResNet50 teacher of the CRD benchmark (RepDistiller `models/resnetv2.py`, `ResNet50`).

Unlike the ImageNet ResNet50 it has a 3x3 stride-1 stem and no max-pool, so 32x32 inputs keep enough
resolution; its residual projections are called `shortcut` and its classifier `linear`, as in the reference
checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pekd.models.init import init_weights


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand x4; shortcut projected when the shape changes."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        # An empty Sequential is the identity and keeps the reference's state-dict keys.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet50(nn.Module):
    """Bottleneck ResNet, (3, 4, 6, 3) blocks at widths 64..512 (x4 expansion: a 2048-d feature)."""

    def __init__(self, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = 512 * Bottleneck.expansion
        self.conv1 = nn.Conv2d(in_chans, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        in_planes = 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(self.feature_dim, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, 2048], logits [B, num_classes])."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        feat = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return feat, self.linear(feat)


def cifar_resnet50(num_classes: int, in_chans: int = 3) -> CifarResNet50:
    return CifarResNet50(num_classes, in_chans)
