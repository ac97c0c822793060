"""The one shape every pipeline yields, so the trainer never knows which backend fed it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A micro-batch.

    images: uint8 [B, C, H, W] (any memory format) or float already normalised; the trainer normalises uint8.
    labels: int64 [B].  index: int64 [B], the sample's position in its source.
    view: int64 [B], which of a feature bank's K views each image is (0 when there is no bank).
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    view: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = True) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in
                       (self.images, self.labels, self.index, self.view)))

    def __len__(self) -> int:
        return int(self.labels.shape[0])
