"""The loss math as pure functions, so tests can check them against hand-computed values."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """mean over the batch of (1 - cos(f_s, f_t)), computed in fp32.

    The official PEFD code divides each feature by its L2 norm (no epsilon) and sums 1 - <u, v> over the batch
    divided by the batch size; F.normalize's tiny epsilon only matters for an all-zero feature, where the official
    code would produce NaN.
    """
    u = F.normalize(f_s.float(), dim=1)
    v = F.normalize(f_t.float(), dim=1)
    return (1.0 - (u * v).sum(dim=1)).mean()


def hinton_kd(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2, batch-mean (Hinton et al. 2015; RepDistiller's DistillKL)."""
    t = temperature
    log_p_s = F.log_softmax(logits_s.float() / t, dim=1)
    log_p_t = F.log_softmax(logits_t.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)
