"""ImageNet backbones: torchvision ResNet-18/34/50 and the classic MobileNet-V1 (1.0x).

The ResNets subclass torchvision's, so torchvision state dicts (and teachers trained with torchvision) load
with strict=True; only `forward` changes, to return the pooled feature with the logits. Nothing is downloaded:
weights come from a local file through `pekd.models.loading`.

MobileNet-V1 is the student of the ResNet50 -> MobileNet-V1 ImageNet pair of CRD/PEFD. torchvision has no V1,
so it is defined here with the key layout the KD literature's checkpoints use (`model.<stage>.<index>`, `fc`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from pekd.models.init import init_weights


class TorchvisionResNet(ResNet):
    """torchvision's ResNet with our (feature, logits) output and an optional non-RGB stem."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int,
                 in_chans: int = 3) -> None:
        super().__init__(block, layers, num_classes=num_classes)
        if in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.num_classes = num_classes
        self.feature_dim = self.fc.in_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, feature_dim], logits [B, num_classes])."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        feat = torch.flatten(self.avgpool(x), 1)
        return feat, self.fc(feat)


def resnet18(num_classes: int, in_chans: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans)


def resnet34(num_classes: int, in_chans: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_chans)


def resnet50(num_classes: int, in_chans: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_chans)


def _separable(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (carries the stride) then pointwise 1x1, each followed by BN-ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_planes, in_planes, 3, stride, 1, groups=in_planes, bias=False),
        nn.BatchNorm2d(in_planes),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_planes, out_planes, 1, bias=False),
        nn.BatchNorm2d(out_planes),
        nn.ReLU(inplace=True),
    )


# (output channels, stride) of the 13 depthwise-separable stages after the 32-channel stride-2 stem.
_V1_STAGES = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


class MobileNetV1(nn.Module):
    """MobileNet-V1 1.0x: 3x3 stride-2 stem, 13 separable stages (total stride 32), average pool, linear."""

    def __init__(self, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = _V1_STAGES[-1][0]
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_chans, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
        )]
        in_planes = 32
        for out_planes, stride in _V1_STAGES:
            layers.append(_separable(in_planes, out_planes, stride))
            in_planes = out_planes
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, 1024], logits [B, num_classes])."""
        feat = torch.flatten(F.adaptive_avg_pool2d(self.model(x), 1), 1)
        return feat, self.fc(feat)


def mobilenet_v1(num_classes: int, in_chans: int = 3) -> MobileNetV1:
    return MobileNetV1(num_classes, in_chans)
