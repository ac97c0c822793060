"""The frozen teacher run every step on the same (normalised, augmented) images the student sees.

Kept in the AMP dtype once. Autocast casts a convolution's or linear layer's fp32 weight to the autocast dtype at
every call, and keeps the cast only for leaves that require grad -- a frozen teacher's do not -- so an online
teacher paid one cast per weight and bias per step (36 for resnet32x4 under bf16, 37 casts with the input's;
tests/test_teacher_casts.py counts them): 36 extra kernels on a launch-bound GPU step. Here those weights are cast
once, to the dtype of the autocast in force at the call, and autocast then finds them in its dtype and casts
nothing but the input. The values are the
ones autocast computed (the same rounding of the same fp32 weights, once instead of every step), so the features are
bit for bit those of the fp32-weighted teacher under autocast, and a feature bank built by pekd.teacher.precompute
(which runs the fp32 weights under the same autocast) stays exact.

Only what autocast itself would cast is kept in the lower precision: convolution and linear weights and biases.
BatchNorm's weight, bias and running statistics stay fp32 -- autocast leaves BatchNorm alone, and its kernel
normalises a bf16 or fp16 input with fp32 statistics. The whole model in bf16, statistics included, moves
resnet32x4's features by up to 0.6 % of their largest value (bench/teacher_casts.py); this choice moves them by 0.
The fp32 weights are kept as they were, so a call outside autocast (or under another dtype) runs on them unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from pekd.data.batch import Batch

# The layers whose weights autocast casts to its lower precision (torch's "lower_precision_fp" op list: convolutions,
# linear); everything else in a teacher runs on its parameters as they are.
CAST_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


class OnlineTeacher:
    """Eval mode, no grad, channels_last; returns (pooled feature, logits) for a micro-batch."""

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        self.model = model.eval().requires_grad_(False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.cast = [p for m in self.model.modules() if isinstance(m, CAST_LAYERS)
                     for p in m.parameters(recurse=False)]
        self.weights: dict[torch.dtype, list[torch.Tensor]] = {torch.float32: [p.data for p in self.cast]}
        self.dtype = torch.float32  # the dtype the cast layers' weights are in now

    def use_dtype(self, dtype: torch.dtype) -> None:
        """Put the cast layers' weights in `dtype`: cast from the fp32 weights the first time, swapped in after."""
        if dtype == self.dtype:
            return
        if dtype not in self.weights:
            self.weights[dtype] = [w.to(dtype) for w in self.weights[torch.float32]]
        for p, w in zip(self.cast, self.weights[dtype], strict=True):
            p.data = w
        self.dtype = dtype

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        kind = images.device.type
        self.use_dtype(torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32)
        feat, logits = self.model(images)
        return feat, logits
