"""Diagnostics of what distillation did to a student, as streaming accumulators (one pass, no n x n matrices).

LinearCKA: feature similarity to the teacher (Kornblith et al., ICML 2019), in its feature-covariance form.
Calibration: top-1, expected calibration error and over-confidence from the same per-bin counts.
DeadUnits, CosineDistance: a projector ensemble's never-activated output units and its final alignment.
"""

from pekd.metrics.calibration import N_BINS, Calibration
from pekd.metrics.cka import LinearCKA
from pekd.metrics.projection import CosineDistance, DeadUnits

__all__ = ["N_BINS", "Calibration", "CosineDistance", "DeadUnits", "LinearCKA"]
