"""The optimizer: SGD over the training module (student + projectors), optionally without weight decay on
normalisation layers' weights and on biases (trainer.no_wd_bn_bias, a common modern recipe)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Layers whose affine parameters are scale/shift of normalised activations: decaying them toward 0 fights the
# normalisation rather than regularising capacity.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(module: nn.Module, weight_decay: float, no_wd_norm_bias: bool) -> list[dict[str, Any]]:
    """One group (every parameter, `weight_decay`), or two: decayed weights, then normalisation-layer parameters
    and biases at weight decay 0. Shared parameters are placed once."""
    if not no_wd_norm_bias:
        return [{"params": list(module.parameters()), "weight_decay": weight_decay}]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(m, NORM_LAYERS) or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, tc: Any, lr: float, fused: bool = False) -> torch.optim.SGD:
    """fused (used with fp16): the fused SGD kernel takes GradScaler's found-inf flag on the device and skips the
    update there, so GradScaler.step need not read the flag on the host every step (it must for the foreach
    kernel). Off otherwise, so that bf16/fp32 runs keep the kernel their bit-exact tests were written against."""
    return torch.optim.SGD(param_groups(module, tc.weight_decay, tc.no_wd_bn_bias), lr=lr, momentum=tc.momentum,
                           weight_decay=tc.weight_decay, nesterov=tc.nesterov, fused=fused or None)
