"""Name -> backbone builder, the one place configs (`model.name`, `teacher.name`) are resolved.

Names are the ones the CRD / RepDistiller / PEFD papers and checkpoints use, so a recipe can be copied from a
paper's table. Every backbone returns `(pooled_feature, logits)` from `forward` and has `feature_dim` and
`num_classes` attributes; `build_model` also records the registry name as `arch`, for error messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import nn

from pekd.errors import PekdError
from pekd.models import cifar_resnet, vgg, wrn
from pekd.models.cifar_resnet50 import cifar_resnet50
from pekd.models.mobilenetv2 import mobilenetv2
from pekd.models.shufflenet import shufflenet_v1, shufflenet_v2

Builder = Callable[..., nn.Module]


def _imagenet(name: str) -> Builder:
    """A builder from pekd.models.imagenet, imported when first called: it imports torchvision.models, which pulls
    in torch._dynamo -- about 3 s of every CIFAR-size run's start on a slow CPU, for models it does not build."""

    def build(**kwargs: int) -> nn.Module:
        from pekd.models import imagenet

        return getattr(imagenet, name)(**kwargs)

    return build


_BUILDERS: dict[str, Builder] = {
    # CIFAR (RepDistiller architectures)
    "resnet8": cifar_resnet.resnet8,
    "resnet14": cifar_resnet.resnet14,
    "resnet20": cifar_resnet.resnet20,
    "resnet32": cifar_resnet.resnet32,
    "resnet44": cifar_resnet.resnet44,
    "resnet56": cifar_resnet.resnet56,
    "resnet110": cifar_resnet.resnet110,
    "resnet8x4": cifar_resnet.resnet8x4,
    "resnet32x4": cifar_resnet.resnet32x4,
    "ResNet50": cifar_resnet50,
    "wrn_16_1": wrn.wrn_16_1,
    "wrn_16_2": wrn.wrn_16_2,
    "wrn_40_1": wrn.wrn_40_1,
    "wrn_40_2": wrn.wrn_40_2,
    "vgg8": vgg.vgg8,
    "vgg11": vgg.vgg11,
    "vgg13": vgg.vgg13,
    "vgg16": vgg.vgg16,
    "vgg19": vgg.vgg19,
    "MobileNetV2": mobilenetv2,
    "ShuffleNetV1": shufflenet_v1,
    "ShuffleNetV2": shufflenet_v2,
    # ImageNet
    "resnet18": _imagenet("resnet18"),
    "resnet34": _imagenet("resnet34"),
    "resnet50": _imagenet("resnet50"),
    "mobilenet_v1": _imagenet("mobilenet_v1"),
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def list_models() -> list[str]:
    """All registered names, CIFAR first, in the order above."""
    return list(MODEL_NAMES)


def build_model(name: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Build a freshly initialised backbone; weights are loaded separately (`pekd.models.load_weights`)."""
    if name not in _BUILDERS:
        raise PekdError(_unknown_name_message(name))
    if num_classes < 1 or in_chans < 1:
        raise PekdError(f"model {name} needs num_classes >= 1 and in_chans >= 1, "
                        f"got num_classes={num_classes}, in_chans={in_chans}")
    model = _BUILDERS[name](num_classes=num_classes, in_chans=in_chans)
    model.arch = name
    return model


def feature_dim(name: str, num_classes: int = 100) -> int:
    """Width of `name`'s pooled feature, without allocating its weights (built on the meta device)."""
    with torch.device("meta"):
        return int(build_model(name, num_classes).feature_dim)


def _unknown_name_message(name: str) -> str:
    by_lower = {known.lower(): known for known in MODEL_NAMES}
    closest = by_lower[difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.0)[0]]
    return f"unknown model '{name}' (closest: '{closest}'); known models: {', '.join(MODEL_NAMES)}"
