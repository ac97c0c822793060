"""What a projector ensemble did on an evaluation set, accumulated batch by batch: which of its output units never
activated, and how far its projection ends from the teacher's feature.

A fresh Linear + ReLU projector can leave output units dead (ReLU output 0 for every image); a dead unit carries
nothing of the student's feature to the teacher's, so a projection with many dead units cannot align with the
teacher however long the student trains. DeadUnits counts them per projector (a unit is alive once any image
gives it a positive output). CosineDistance is the quantity the PEFD loss minimises, mean(1 - cos) over images
(each side L2-normalised), measured on the test set after training: the final alignment.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class DeadUnits:
    """update(outputs) with each projector's post-ReLU outputs [batch, q, d]; fractions() per projector."""

    def __init__(self) -> None:
        self._alive: torch.Tensor | None = None  # [q, d] bool: some image activated this unit

    def update(self, outputs: torch.Tensor) -> DeadUnits:
        if outputs.dim() != 3:
            raise ValueError(f"expected per-projector outputs [batch, q, d], got shape {tuple(outputs.shape)}")
        alive = (outputs.detach() > 0).any(dim=0).cpu()
        self._alive = alive if self._alive is None else self._alive | alive
        return self

    def fractions(self) -> list[float]:
        """The fraction of each projector's output units that no image activated (empty before any batch)."""
        if self._alive is None:
            return []
        return [float(x) for x in (~self._alive).double().mean(dim=1)]

    def mean(self) -> float:
        """The fractions' mean over the projectors (NaN before any batch)."""
        f = self.fractions()
        return sum(f) / len(f) if f else math.nan


class CosineDistance:
    """update(x, y) with matching rows; value(): mean over rows of 1 - cos(x, y), in float64."""

    def __init__(self) -> None:
        self.n = 0
        self._sum = 0.0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> CosineDistance:
        u = F.normalize(x.detach().flatten(1).double(), dim=1)
        v = F.normalize(y.detach().flatten(1).double(), dim=1)
        self._sum += float((1.0 - (u * v).sum(dim=1)).sum())
        self.n += x.shape[0]
        return self

    def value(self) -> float:
        return self._sum / self.n if self.n else math.nan
