"""The shared harness: a Method owns its trainable extras and turns outputs into named, weighted losses.

TrainModule puts the student and the method's extras (projectors) in ONE module, so DistributedDataParallel wraps
both and reduces their gradients in a single bucketed all-reduce; the exported student is `train_module.student`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pekd.errors import PekdError
from pekd.methods.losses import hinton_kd


@dataclass(frozen=True)
class TeacherNeeds:
    """What a method reads from the teacher; decides whether a feature bank can serve it."""

    feature: bool
    logits: bool


class Method(nn.Module):
    """Base: cross-entropy (weighted) plus, in subclasses, a teacher term."""

    def __init__(self, ce_weight: float = 1.0, kd_weight: float = 0.0, temperature: float = 4.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, cfg: Any, d_s: int, d_t: int | None, num_classes: int | None = None) -> Method:
        """Build from the `method` config section; methods with more knobs override this."""
        return cls(**common_args(cfg))

    @property
    def needs(self) -> TeacherNeeds:
        return TeacherNeeds(feature=False, logits=self.kd_weight > 0)

    def kd_logits(self, logits_s: torch.Tensor) -> torch.Tensor:
        """What the KD term compares with the teacher's logits: the student's own, unless a method maps them."""
        return logits_s

    def feature_loss(self, feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, feat_s: torch.Tensor, logits_s: torch.Tensor, labels: torch.Tensor,
                feat_t: torch.Tensor | None, logits_t: torch.Tensor | None) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(logits_s.float(), labels, label_smoothing=self.label_smoothing)
        losses = {"ce": self.ce_weight * ce}
        if self.kd_weight > 0:
            assert logits_t is not None
            losses["kd"] = self.kd_weight * hinton_kd(self.kd_logits(logits_s), logits_t, self.temperature)
        if self.needs.feature:
            assert feat_t is not None
            feat = self.feature_loss(feat_s, feat_t)
            assert feat is not None
            losses["feat"] = feat
        return losses


class TrainModule(nn.Module):
    """Student + method extras; forward returns (logits, losses) so DDP sees every trainable parameter used."""

    def __init__(self, student: nn.Module, method: Method) -> None:
        super().__init__()
        self.student, self.method = student, method

    def forward(self, images: torch.Tensor, labels: torch.Tensor, feat_t: torch.Tensor | None = None,
                logits_t: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feat_s, logits_s = self.student(images)
        return logits_s, self.method(feat_s, logits_s, labels, feat_t, logits_t)


def common_args(cfg: Any) -> dict[str, float]:
    """The loss weights every method takes (a run directory's config.yaml from before label smoothing, read back
    by pekd.analyze, has no such key: its CE had none)."""
    return dict(ce_weight=cfg.ce_weight, kd_weight=cfg.kd_weight, temperature=cfg.temperature,
                label_smoothing=getattr(cfg, "label_smoothing", 0.0))


def teacher_feature_dim(cfg: Any, d_t: int | None) -> int:
    """d_t for a method that distils features: without a teacher there is nothing to distil."""
    if d_t is None:
        raise PekdError(f"method.name={cfg.name} distils features and needs a teacher; set teacher.name")
    return d_t
