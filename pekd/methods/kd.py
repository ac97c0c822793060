"""Hinton KD (T = 4 by default): the logit baseline the paper compares against, and the official code's
logit-projector variant (the extended paper's third claim: projectors improve logit distillation too).

method.logit_projector=true follows the official PEFD code's `--distill kd1proj` (github.com/chenyd7/PEFD,
train_student.py and helper/loops.py, read for this file): a `Reg(n_cls, n_cls)` -- one nn.Linear with bias, torch's
default init -- is appended to the trainable list beside the student (so SGD trains it, with the same weight
decay), and the loss is `gamma * CE(logit_s, y) + beta * DistillKL(Reg(logit_s), logit_t)`: the cross-entropy
reads the student's RAW logits, only the KD term reads the projected ones, and DistillKL is
KL(softmax(t/T) || softmax(s/T)) * T^2 summed over the batch and divided by its size (batch mean), T = 4; its run
script uses -r 0.1 -b 0.9 (here ce_weight / kd_weight). Evaluation and the export use the raw logits
(`validate(val_loader, model_s, ...)`), so the projector, like PEFD's, is dropped at test time; it lives in the
TrainModule, so checkpoints and DDP carry it as they carry PEFD's projectors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pekd.errors import PekdError
from pekd.methods.base import Method, common_args
from pekd.methods.registry import register


@register("kd")
class HintonKD(Method):
    """ce_weight * CE(z) + kd_weight * T^2 KL(teacher_T || student_T), student_T from z or, with a logit
    projector, from Linear(z)."""

    def __init__(self, ce_weight: float, kd_weight: float, temperature: float, label_smoothing: float = 0.0,
                 num_classes: int | None = None) -> None:
        if kd_weight <= 0:
            raise PekdError(f"method.name=kd with method.kd_weight={kd_weight}: set a positive KD weight "
                            "(configs/method/kd.yaml uses RepDistiller's 0.9 with ce_weight 0.1)")
        super().__init__(ce_weight, kd_weight, temperature, label_smoothing)
        self.logit_projector = nn.Linear(num_classes, num_classes) if num_classes else None

    @classmethod
    def from_config(cls, cfg: Any, d_s: int, d_t: int | None, num_classes: int | None = None) -> HintonKD:
        if getattr(cfg, "logit_projector", False) and not num_classes:
            raise PekdError("method.logit_projector=true needs the number of classes to build its Linear")
        return cls(**common_args(cfg), num_classes=num_classes if getattr(cfg, "logit_projector", False) else None)

    def kd_logits(self, logits_s: torch.Tensor) -> torch.Tensor:
        return logits_s if self.logit_projector is None else self.logit_projector(logits_s)
