"""CIFAR VGG with BN and no FC stack (RepDistiller `vgg8_bn` ... `vgg19_bn`, registered as vgg8 ... vgg19).

Five conv blocks `block0`..`block4` (each a Sequential of conv(bias)-BN-ReLU units whose trailing ReLU is left
out, as in the reference, so the indices inside each block match its checkpoints), max-pools between blocks, a
global average pool and one linear `classifier`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pekd.models.init import init_weights

# Conv widths per block; the name is the depth counted as convs + the classifier.
_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(widths: tuple[int, ...], in_planes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_planes, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_planes = width
    # The caller applies the block's last ReLU, so the pre-activation is reachable (as in the reference).
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """block0 pool block1 pool block2 pool block3 [pool] block4 avgpool classifier.

    The pool after block3 runs only for 64-pixel inputs (Tiny-ImageNet), exactly like the reference: this
    keeps block4 at 4x4 for both 32- and 64-pixel images, and checkpoints trained either way behave as
    published.
    """

    def __init__(self, widths: tuple[tuple[int, ...], ...], num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = widths[4][-1]
        self.block0 = _block(widths[0], in_chans)
        self.block1 = _block(widths[1], widths[0][-1])
        self.block2 = _block(widths[2], widths[1][-1])
        self.block3 = _block(widths[3], widths[2][-1])
        self.block4 = _block(widths[4], widths[3][-1])
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        init_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pooled post-ReLU feature [B, 512], logits [B, num_classes])."""
        tiny_imagenet = x.shape[2] == 64
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if tiny_imagenet:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))
        feat = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return feat, self.classifier(feat)


def vgg8(num_classes: int, in_chans: int = 3) -> VGG:
    return VGG(_CONFIGS["vgg8"], num_classes, in_chans)


def vgg11(num_classes: int, in_chans: int = 3) -> VGG:
    return VGG(_CONFIGS["vgg11"], num_classes, in_chans)


def vgg13(num_classes: int, in_chans: int = 3) -> VGG:
    return VGG(_CONFIGS["vgg13"], num_classes, in_chans)


def vgg16(num_classes: int, in_chans: int = 3) -> VGG:
    return VGG(_CONFIGS["vgg16"], num_classes, in_chans)


def vgg19(num_classes: int, in_chans: int = 3) -> VGG:
    return VGG(_CONFIGS["vgg19"], num_classes, in_chans)
