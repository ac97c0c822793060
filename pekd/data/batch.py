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
    features: the feature bank's rows for (view, index), [B, d] in the bank's dtype (then C columns of the teacher's
    logits, in a bank that holds them: pekd.teacher.bank.BankTeacher splits them), when the run reads a bank:
    gathered by the data pipeline (pekd.teacher.bank.BankRows) so that they travel with the images -- pinned by
    the DataLoader, copied to the GPU by the prefetch -- instead of being read on the training thread mid-step.
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    view: torch.Tensor
    features: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        """Every tensor in page-locked memory. torch's DataLoader (pin_memory=True) calls this on whatever its
        collate returns, so a Batch comes out of the loader pinned, and its copies to the GPU can be
        asynchronous (a copy from pageable memory blocks the host)."""
        return Batch(*(None if t is None else t.pin_memory() for t in self._tensors()))

    def to(self, device: torch.device, non_blocking: bool = True) -> Batch:
        return Batch(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return self.images, self.labels, self.index, self.view, self.features

    def __len__(self) -> int:
        return int(self.labels.shape[0])
