"""Wide ResNets WRN-d-k of the CRD benchmark (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Pre-activation blocks with names and shapes as in RepDistiller's `models/wrn.py`, so its teacher checkpoints
load with strict=True. Pooling is adaptive instead of a fixed 8x8 window (identical on 32x32 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pekd.models.init import init_weights


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice, with a residual.

    When the width or stride changes, the 1x1 `convShortcut` reads the *pre-activated* input, as in the
    reference (and the original WRN code); otherwise the identity shortcut reads the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.convShortcut: nn.Module | None = None  # camelCase: the reference checkpoints' key
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    """One stage; the extra `layer` level mirrors the reference's keys (`block1.layer.0.conv1.weight`)."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(PreActBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
              for i in range(blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """conv stem, three pre-activation stages of width 16k, 32k, 64k, final BN-ReLU, global average pool."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes = num_classes
        self.feature_dim = widths[3]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self, linear="zero_bias")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, feature_dim], logits [B, num_classes])."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn1(x))
        feat = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return feat, self.fc(feat)


def wrn_16_1(num_classes: int, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 1, num_classes, in_chans)


def wrn_16_2(num_classes: int, in_chans: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_chans)


def wrn_40_1(num_classes: int, in_chans: int = 3) -> WideResNet:
    return WideResNet(40, 1, num_classes, in_chans)


def wrn_40_2(num_classes: int, in_chans: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_chans)
