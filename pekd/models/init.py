"""RepDistiller's weight initialisation, shared by the CIFAR zoo and MobileNet-V1, so students trained from
scratch start where the paper's did."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, linear: str = "default") -> None:
    """Kaiming-normal (fan_out) convolutions with zero bias, BatchNorm weight 1 and bias 0.

    linear: 'default' keeps PyTorch's Linear init, 'zero_bias' zeroes its bias, 'normal' draws N(0, 0.01) weights
    with zero bias (VGG, MobileNetV2).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
