"""Projector-ensemble feature distillation (Chen et al., NeurIPS 2022).

The student feature goes through q projectors (Linear + ReLU by default), their outputs are averaged, and the
average is pulled towards the teacher's feature in cosine distance: ce + beta * mean(1 - cos). q = 1 is feature
distillation with one projector. The projectors train with the student and are dropped at test time.
"""

from __future__ import annotations

from typing import Any

import torch

from pekd.methods.base import Method, TeacherNeeds, common_args, teacher_feature_dim
from pekd.methods.losses import cosine_distance
from pekd.methods.projector import build_projector
from pekd.methods.registry import register


@register("pefd")
class ProjectorEnsembleFD(Method):
    def __init__(self, d_s: int, d_t: int, beta: float, q: int, projector: str, **common: float) -> None:
        super().__init__(**common)
        self.beta, self.q = beta, q
        self.projector = build_projector(projector, d_s, d_t, q)

    @classmethod
    def from_config(cls, cfg: Any, d_s: int, d_t: int | None, num_classes: int | None = None) -> ProjectorEnsembleFD:
        return cls(d_s, teacher_feature_dim(cfg, d_t), beta=cfg.beta, q=cfg.q, projector=cfg.projector,
                   **common_args(cfg))

    @property
    def needs(self) -> TeacherNeeds:
        return TeacherNeeds(feature=True, logits=self.kd_weight > 0)

    def feature_loss(self, feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
        return self.beta * cosine_distance(self.projector(feat_s), feat_t)
