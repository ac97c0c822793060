"""The mechanism diagnostics of one pass over a set, fed batch by batch: by pekd.analyze's own pass over a run's
sets, or by the trainer's final evaluation (trainer.analyze=true, pekd.science.fused_analysis), which has just computed
the student's outputs on the test set and would otherwise compute them again.

Either way each batch arrives as the model input, its labels and sample indices, and the student's (features,
logits); `observe` adds the teacher's outputs (from a TeacherOutputs cache or a forward), the projector ensemble's
outputs, and updates every accumulator. `results` turns a test pass and a train pass into analysis.json's object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pekd.metrics import Calibration, CosineDistance, DeadUnits, LinearCKA

KEYS = ("weights", "n_train", "n_test", "eval_set", "train_set", "student_train_top1", "student_test_top1",
        "projected_logits_test_top1", "train_test_gap", "student_cka", "projector_cka", "student_cos_distance",
        "projector_cos_distance", "projector_dead_fraction", "projector_dead_fractions", "student_ece",
        "student_overconfidence", "teacher_train_top1", "teacher_test_top1", "teacher_ece", "teacher_overconfidence",
        "test_pass", "pekd_version")


@dataclass
class Models:
    """What one run analyses. projector_student is the checkpoint's own student when it is not the analysed one:
    the projectors were trained against it, so their CKA is measured on its features. logit_projector: KD's
    Linear(logits) (method.logit_projector=true), dropped at test time like PEFD's projectors; its output's own
    top-1 says whether the distilled signal reached a head that is never evaluated."""

    student: nn.Module
    teacher: nn.Module | None = None
    projector: nn.Module | None = None
    projector_student: nn.Module | None = None
    logit_projector: nn.Module | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Meters:
    """One pass's accumulators; the feature ones stay empty on the training set."""

    student: Calibration = field(default_factory=Calibration)
    projected: Calibration = field(default_factory=Calibration)  # Linear(student logits), KD's logit projector
    teacher: Calibration = field(default_factory=Calibration)
    student_cka: LinearCKA = field(default_factory=LinearCKA)
    projector_cka: LinearCKA = field(default_factory=LinearCKA)
    student_cos: CosineDistance = field(default_factory=CosineDistance)
    projector_cos: CosineDistance = field(default_factory=CosineDistance)
    dead: DeadUnits = field(default_factory=DeadUnits)


class TeacherOutputs:
    """The teacher's (features, logits) of every sample of one set, by sample index, in host memory: runs of a
    sweep share their teacher, so one process runs it once per set. Host memory, not the GPU's: an ImageNet train
    set's resnet18 outputs are 1.28M x (512 + 1000) floats, 7.7 GB, which the GPU needs for the models."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.features: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.filled = torch.zeros(n, dtype=torch.bool)

    def get(self, index: torch.Tensor, x: torch.Tensor, teacher: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's outputs for these samples (on x's device, fp32): stored ones, or a forward stored now."""
        index = index.cpu().long()
        if self.features is not None and bool(self.filled[index].all()):
            return self.features[index].to(x.device), self.logits[index].to(x.device)  # type: ignore[index]
        feat, logits = (t.float() for t in teacher(x))
        if self.features is None:
            self.features = torch.zeros(self.n, feat.shape[1])
            self.logits = torch.zeros(self.n, logits.shape[1])
        self.features[index] = feat.cpu()
        self.logits[index] = logits.cpu()  # type: ignore[index]
        self.filled[index] = True
        return feat, logits


def observe(m: Meters, models: Models, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
            feat_s: torch.Tensor, logits_s: torch.Tensor, cached: TeacherOutputs | None, features: bool) -> None:
    """One batch into the meters; features=False skips everything but top-1 and calibration (the train pass)."""
    feat_s, logits_s = feat_s.float(), logits_s.float()
    m.student.update(logits_s, labels)
    if features and models.logit_projector is not None:
        own = models.projector_student(x)[1].float() if models.projector_student is not None else logits_s
        m.projected.update(models.logit_projector(own).float(), labels)
    if models.teacher is None:
        return
    if cached is not None:
        feat_t, logits_t = cached.get(index, x, models.teacher)
    else:
        feat_t, logits_t = (t.float() for t in models.teacher(x))
    m.teacher.update(logits_t, labels)
    if not features:
        return
    m.student_cka.update(feat_s, feat_t)
    if feat_s.shape[1] == feat_t.shape[1]:  # FD's own alignment, comparable with the projection's
        m.student_cos.update(feat_s, feat_t)
    if models.projector is not None:
        own = models.projector_student(x)[0].float() if models.projector_student is not None else feat_s
        was = models.projector.training
        models.projector.eval()
        outputs = models.projector.per_projector(own)  # type: ignore[operator]
        models.projector.train(was)
        projection = outputs.mean(dim=1)
        m.projector_cka.update(projection, feat_t)
        m.projector_cos.update(projection, feat_t)
        m.dead.update(outputs)


def results(test: Meters, train: Meters, models: Models, weights: str, eval_set: Any, train_set: Any,
            test_pass: str) -> dict[str, Any]:
    """analysis.json's flat object (KEYS, in order); what was not measured is null."""
    import pekd

    has_t, has_p = models.teacher is not None, models.projector is not None
    out: dict[str, Any] = {
        "weights": weights, "n_train": train.student.n, "n_test": test.student.n,
        "eval_set": eval_set, "train_set": train_set,
        "student_train_top1": train.student.top1(), "student_test_top1": test.student.top1(),
        "projected_logits_test_top1": test.projected.top1() if models.logit_projector is not None else None,
        "train_test_gap": train.student.top1() - test.student.top1(),
        "student_cka": test.student_cka.value() if has_t else None,
        "projector_cka": test.projector_cka.value() if has_p else None,
        "student_cos_distance": test.student_cos.value() if test.student_cos.n else None,
        "projector_cos_distance": test.projector_cos.value() if has_p else None,
        "projector_dead_fraction": test.dead.mean() if has_p else None,
        "projector_dead_fractions": test.dead.fractions() if has_p else None,
        "student_ece": test.student.ece(), "student_overconfidence": test.student.overconfidence(),
        "teacher_train_top1": train.teacher.top1() if has_t else None,
        "teacher_test_top1": test.teacher.top1() if has_t else None,
        "teacher_ece": test.teacher.ece() if has_t else None,
        "teacher_overconfidence": test.teacher.overconfidence() if has_t else None,
        "test_pass": test_pass, "pekd_version": pekd.__version__,
    }
    assert tuple(out) == KEYS
    # JSON has no NaN: an undefined value (e.g. CKA of a constant feature) is null, like a missing one.
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}
