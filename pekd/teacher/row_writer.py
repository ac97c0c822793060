"""Teacher features (and logits, where the bank holds them) into the bank's memmap, in the bank's dtype, refusing
values the dtype cannot hold."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pekd.errors import PekdError


def to_bank_dtype(feat: torch.Tensor, dtype: str) -> np.ndarray:
    out = feat.float().to(getattr(torch, dtype)).cpu().numpy()
    if not np.isfinite(out).all():
        raise PekdError(f"teacher features are not finite in {dtype} (largest |f| = {feat.float().abs().max():.4g});"
                        " float16 holds at most 65504: use bank.dtype=float32")
    return out


def bank_row(feat: torch.Tensor, logits: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """A bank row of the teacher's outputs: its feature, then its logits where the bank holds them."""
    return torch.cat([feat, logits], 1) if spec.get("logits") else feat


class RowWriter:
    """Writes teacher features into the bank one batch behind the teacher. On CUDA a batch's rows are copied
    (non_blocking) into pinned host memory and the host waits only for that copy's event when the next batch
    has been queued: the device computes batch i + 1 while the host writes batch i, instead of idling at a
    device read after every batch. On a CPU the rows are written at once."""

    def __init__(self, features: np.memmap, dtype: str) -> None:
        self.features, self.dtype = features, dtype
        self.pending: tuple[int, np.ndarray, torch.Tensor, torch.Tensor, torch.cuda.Event] | None = None

    def add(self, view: int, index: np.ndarray, feat: torch.Tensor) -> None:
        if feat.device.type != "cuda":
            self.features[view, index] = to_bank_dtype(feat, self.dtype)
            return
        rows = feat.float().to(getattr(torch, self.dtype))
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.flush()
        self.pending = (view, index, feat, host, event)

    def flush(self) -> None:
        """Write the batch still in flight, if any (before a chunk's marker, and at the end)."""
        if self.pending is None:
            return
        view, index, feat, host, event = self.pending
        self.pending = None
        event.synchronize()
        out = host.numpy()
        if not np.isfinite(out).all():
            raise PekdError(f"teacher features are not finite in {self.dtype} (largest |f| = "
                            f"{feat.float().abs().max():.4g}); float16 holds at most 65504: use bank.dtype=float32")
        self.features[view, index] = out
