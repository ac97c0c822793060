"""Feature distillation without a projector: the student's pooled feature is compared to the teacher's directly.

This is the paper's "no projector" baseline; it only makes sense when d_s == d_t.
"""

from __future__ import annotations

from typing import Any

import torch

from pekd.errors import PekdError
from pekd.methods.base import Method, TeacherNeeds, common_args, teacher_feature_dim
from pekd.methods.losses import cosine_distance
from pekd.methods.registry import register


@register("fd")
class FeatureDistillation(Method):
    """ce + beta * mean(1 - cos(f_s, f_t))."""

    def __init__(self, d_s: int, d_t: int, beta: float, **common: float) -> None:
        if d_s != d_t:
            raise PekdError(f"method.name=fd needs equal feature sizes but the student's is {d_s} and the "
                            f"teacher's {d_t}; use method=pefd (method.q=1 is FD with one projector)")
        super().__init__(**common)
        self.beta = beta

    @classmethod
    def from_config(cls, cfg: Any, d_s: int, d_t: int | None, num_classes: int | None = None) -> FeatureDistillation:
        return cls(d_s, teacher_feature_dim(cfg, d_t), beta=cfg.beta, **common_args(cfg))

    @property
    def needs(self) -> TeacherNeeds:
        return TeacherNeeds(feature=True, logits=self.kd_weight > 0)

    def feature_loss(self, feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
        return self.beta * cosine_distance(feat_s, feat_t)
