"""The CIFAR ShuffleNets of the CRD benchmark: ShuffleNetV1 (groups 3) and ShuffleNetV2 (1.0x).

Names and shapes follow RepDistiller's `models/ShuffleNetv1.py` (`ShuffleV1`) and `models/ShuffleNetv2.py`
(`ShuffleV2`), so their checkpoints load with strict=True. Both use a 1x1 stem without striding (32x32 CIFAR
images are too small to downsample early); the final 4x4 average pool becomes adaptive (same on 32x32 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups, so the next grouped conv sees every group."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1, with a residual.

    A strided unit concatenates an average-pooled input instead of adding it, so its own branch only produces
    `out_planes` = stage width - input width. The first 1x1 of the whole net is ungrouped: 24 stem channels
    are too few to split.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride, 1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            out = torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        else:
            out = out + x
        return F.relu(out)


class ShuffleNetV1(nn.Module):
    """1x1 stem to 24, three stages of (4, 8, 4) units, widths (240, 480, 960), groups 3, each halving."""

    def __init__(self, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        widths, depths, groups = (240, 480, 960), (4, 8, 4), 3
        self.num_classes = num_classes
        self.feature_dim = widths[-1]
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages = []
        in_planes = 24
        for width, depth in zip(widths, depths, strict=True):
            units = [ShuffleV1Unit(in_planes, width - in_planes, 2, groups)]
            units += [ShuffleV1Unit(width, width, 1, groups) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*units))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, 960], logits [B, num_classes])."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        feat = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return feat, self.linear(feat)


class ShuffleV2Unit(nn.Module):
    """Split channels in half; one half passes, the other gets 1x1, 3x3 depthwise, 1x1; concat, shuffle."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        half = planes // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, branch = x.chunk(2, dim=1)
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn2(self.conv2(branch))
        branch = F.relu(self.bn3(self.conv3(branch)))
        return channel_shuffle(torch.cat([keep, branch], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches read the whole input (dw3x3-1x1 and 1x1-dw3x3-1x1); concat, shuffle."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        mid = out_planes // 2
        self.conv1 = nn.Conv2d(in_planes, in_planes, 3, 2, 1, groups=in_planes, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv2 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_planes, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """1x1 stem to 24, three stages (a down unit + (3, 7, 3) units) at (116, 232, 464), 1x1 conv to 1024."""

    def __init__(self, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        widths, depths = (116, 232, 464), (3, 7, 3)
        self.num_classes = num_classes
        self.feature_dim = 1024
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        stages = []
        in_planes = 24
        for width, depth in zip(widths, depths, strict=True):
            units = [ShuffleV2Down(in_planes, width)] + [ShuffleV2Unit(width) for _ in range(depth)]
            stages.append(nn.Sequential(*units))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(widths[-1], self.feature_dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.feature_dim)
        self.linear = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, 1024], logits [B, num_classes])."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        feat = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return feat, self.linear(feat)


def shufflenet_v1(num_classes: int, in_chans: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, in_chans)


def shufflenet_v2(num_classes: int, in_chans: int = 3) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_chans)
