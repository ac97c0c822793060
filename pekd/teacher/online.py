"""The frozen teacher run every step on the same (normalised, augmented) images the student sees."""

from __future__ import annotations

import torch
from torch import nn

from pekd.data.batch import Batch


class OnlineTeacher:
    """Eval mode, no grad, channels_last; returns (pooled feature, logits) for a micro-batch."""

    def __init__(self, model: nn.Module, channels_last: bool) -> None:
        self.model = model.eval().requires_grad_(False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        feat, logits = self.model(images)
        return feat, logits
