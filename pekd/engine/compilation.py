"""trainer.compile: torch.compile of what runs every step -- the training module and the online teacher.

Under DDP the DDP module itself is compiled (torch's guidance for DDP + torch.compile): TorchDynamo's DDP
optimizer splits the graph at DDP's gradient-bucket boundaries so that the all-reduces still overlap the backward,
and DDP's own forward (no_sync included) keeps working. Compiling wraps, it does not change the modules: the
trainer keeps the uncompiled module and saves its state_dict, so checkpoints carry the same keys as an eager run
(no `_orig_mod.` prefixes) and resume eager or compiled, on any world size. Evaluation runs the uncompiled
student (its batches differ in size; it runs once an epoch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pekd.engine.determinism import inductor_deterministic
from pekd.teacher.online import OnlineTeacher


def compile_training(model: nn.Module, teacher: Any) -> nn.Module:
    """`model` (the training module, or its DDP wrapper) compiled; an online teacher's model compiled in place.
    A feature bank is a table lookup: nothing to compile."""
    inductor_deterministic()
    if isinstance(teacher, OnlineTeacher):
        teacher.model = torch.compile(teacher.model)
    return torch.compile(model)
