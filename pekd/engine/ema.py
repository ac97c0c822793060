"""trainer.ema_decay: an exponential moving average of the student, updated after every optimizer step.

torch's AveragedModel with get_ema_multi_avg_fn: ema = decay * ema + (1 - decay) * student (one foreach lerp),
the first update copying the student. use_buffers=True averages BatchNorm's running statistics too, so the
average is a model that can be evaluated and exported as it is (no BatchNorm re-estimation pass). Only the student
is averaged: projectors are training-time only. Under DDP every rank keeps one; its parameters are the same on
every rank and rank 0's buffers are the ones checkpointed, evaluated (broadcast first) and exported, as for the
student itself.

The AveragedModel is built without a device, so its step counter (n_averaged) stays on the host and its
`n_averaged == 0` tests read no device memory; update_parameters still copies the counter to the device for the
averaging function each step (a one-number host->device copy, which the CUDA sync debug mode may report).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class StudentEMA:
    def __init__(self, student: nn.Module, decay: float) -> None:
        self.averaged = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.averaged.requires_grad_(False)

    @property
    def model(self) -> nn.Module:
        """The averaged student, a backbone like the student (evaluated and exported as ema.pt)."""
        return self.averaged.module

    def update(self, student: nn.Module) -> None:
        self.averaged.update_parameters(student)

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
