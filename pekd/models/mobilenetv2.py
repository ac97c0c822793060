"""The CIFAR MobileNetV2 student of the CRD benchmark (RepDistiller `mobile_half`: expansion 6, width 0.5).

Names and shapes follow RepDistiller's `models/mobilenetv2.py` (`conv1`, `blocks.i.j.conv.k`, `conv2`,
`classifier.0`), so its checkpoints load with strict=True. Its final 2x2 average pool becomes adaptive, which
is the same on 32x32 inputs and also works on smaller ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pekd.models.init import init_weights


def _conv_bn_relu(in_planes: int, out_planes: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (carries the stride), linear 1x1 project; residual when shapes match.

    The expand conv is kept even at expansion 1, as in the reference: its checkpoints contain it.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_residual = stride == 1 and in_planes == out_planes
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_planes, 1, bias=False),
            nn.BatchNorm2d(out_planes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


_WIDTH = 0.5  # `mobile_half`: every width of the original MobileNetV2 halved, except the 1280-d head
# (expansion, channels at width 1.0, blocks, first stride)
_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
    """Half-width MobileNetV2: stride-2 stem, 7 inverted-residual groups, 1x1 conv to 1280, avg pool, linear.

    The classifier sits in a one-element Sequential only because the reference's keys say `classifier.0`.
    """

    def __init__(self, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = 1280
        channels = int(32 * _WIDTH)
        self.conv1 = _conv_bn_relu(in_chans, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTINGS:
            out_channels = int(c * _WIDTH)
            group = []
            for i in range(n):
                group.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        self.conv2 = _conv_bn_relu(channels, self.feature_dim, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.feature_dim, num_classes))
        init_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, 1280], logits [B, num_classes])."""
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        feat = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return feat, self.classifier(feat)


def mobilenetv2(num_classes: int, in_chans: int = 3) -> MobileNetV2:
    """The `mobile_half` configuration every CRD-style paper calls "MobileNetV2"."""
    return MobileNetV2(num_classes, in_chans)
