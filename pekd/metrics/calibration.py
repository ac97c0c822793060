"""Top-1, expected calibration error and over-confidence, accumulated batch by batch.

ECE (Guo et al., ICML 2017) with N_BINS equal-width confidence bins (lo, hi]: sum_b (n_b / n) |acc_b - conf_b|,
in percent. Over-confidence is mean confidence minus accuracy in points: positive means the model claims more
than it delivers, which ECE alone (an absolute value per bin) cannot say. All three come from per-bin sums of
samples, confidences and hits, so a whole evaluation set costs 3 x N_BINS numbers.
"""

from __future__ import annotations

import math

import torch

N_BINS = 15


class Calibration:
    """Streaming accumulator: update(logits, labels) per batch, then top1(), ece(), overconfidence()."""

    def __init__(self, n_bins: int = N_BINS) -> None:
        self.n_bins = n_bins
        self._count = torch.zeros(n_bins, dtype=torch.float64)
        self._conf = torch.zeros(n_bins, dtype=torch.float64)
        self._hits = torch.zeros(n_bins, dtype=torch.float64)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> Calibration:
        """A batch of classifier outputs: confidence is the top softmax probability, a hit is argmax == label."""
        logits = logits.detach().float()
        conf = torch.softmax(logits, dim=1).amax(dim=1)
        return self.update_confidences(conf, logits.argmax(dim=1) == labels)

    def update_confidences(self, confidence: torch.Tensor, correct: torch.Tensor) -> Calibration:
        """Samples given directly as (confidence in [0, 1], correct or not)."""
        conf = confidence.detach().to("cpu", torch.float64).reshape(-1)
        hits = correct.detach().to("cpu", torch.float64).reshape(-1)
        bins = ((conf * self.n_bins).ceil().long() - 1).clamp_(0, self.n_bins - 1)
        self._count.index_add_(0, bins, torch.ones_like(conf))
        self._conf.index_add_(0, bins, conf)
        self._hits.index_add_(0, bins, hits)
        return self

    @property
    def n(self) -> int:
        return int(self._count.sum().item())

    def top1(self) -> float:
        """Accuracy in percent (NaN before any sample)."""
        return 100.0 * self._hits.sum().item() / self.n if self.n else math.nan

    def ece(self) -> float:
        """Expected calibration error in percent."""
        return 100.0 * (self._hits - self._conf).abs().sum().item() / self.n if self.n else math.nan

    def overconfidence(self) -> float:
        """Mean confidence minus accuracy, in points; positive = over-confident."""
        return 100.0 * (self._conf.sum() - self._hits.sum()).item() / self.n if self.n else math.nan
