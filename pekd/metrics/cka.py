"""Linear CKA between two feature sets, accumulated batch by batch.

CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) for column-centred X (n x d1) and Y (n x d2). This
feature-covariance form equals the HSIC form on n x n Gram matrices but costs O(n d^2) time and O(d^2) memory,
so it runs over a whole evaluation set. The sums are kept in float64 and centred only at the end
(Xc^T Xc = X^T X - n mu mu^T); rows are first shifted by the first batch's mean, which leaves the centred
moments unchanged but keeps that subtraction from cancelling away the variance of features with large means
(ReLU features are all non-negative).
"""

from __future__ import annotations

import math

import torch


class LinearCKA:
    """Streaming linear CKA: update(x, y) with matching rows, any batch sizes; value() at the end."""

    def __init__(self) -> None:
        self.n = 0
        self._shift: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sx = self._sy = self._xx = self._yy = self._yx = torch.zeros(0, dtype=torch.float64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> LinearCKA:
        """Add rows x (b x d1) and y (b x d2) of the same b samples."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs the same samples on both sides, got {x.shape[0]} and {y.shape[0]} rows")
        x = x.detach().flatten(1).to(torch.float64)
        y = y.detach().flatten(1).to(torch.float64)
        if self._shift is None:
            self._shift = (x.mean(0), y.mean(0))
            d1, d2 = x.shape[1], y.shape[1]
            zeros = dict(dtype=torch.float64, device=x.device)
            self._sx, self._sy = torch.zeros(d1, **zeros), torch.zeros(d2, **zeros)
            self._xx, self._yy = torch.zeros(d1, d1, **zeros), torch.zeros(d2, d2, **zeros)
            self._yx = torch.zeros(d2, d1, **zeros)
        x, y = x - self._shift[0], y - self._shift[1]
        self._sx += x.sum(0)
        self._sy += y.sum(0)
        self._xx += x.T @ x
        self._yy += y.T @ y
        self._yx += y.T @ x
        self.n += x.shape[0]
        return self

    def value(self) -> float:
        """CKA in [0, 1]; NaN when either side has no variance (a constant feature set has no geometry)."""
        if self.n == 0:
            return math.nan
        mx, my = self._sx / self.n, self._sy / self.n
        cxx = self._xx - self.n * torch.outer(mx, mx)
        cyy = self._yy - self.n * torch.outer(my, my)
        cyx = self._yx - self.n * torch.outer(my, mx)
        den = torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)
        if den.item() <= 0:
            return math.nan
        return float((cyx.square().sum() / den).item())
