"""Diagnostics of what distillation did to a student, as streaming accumulators (one pass, no n x n matrices).

LinearCKA: feature similarity to the teacher (Kornblith et al., ICML 2019), in its feature-covariance form.
Calibration: top-1, expected calibration error and over-confidence from the same per-bin counts.
"""

from pekd.metrics.calibration import N_BINS, Calibration
from pekd.metrics.cka import LinearCKA

__all__ = ["N_BINS", "Calibration", "LinearCKA"]
