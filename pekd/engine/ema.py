"""trainer.ema_decay: an exponential moving average of the student, updated after every optimizer step.

ema = decay * ema + (1 - decay) * student, the first update copying the student: get_ema_multi_avg_fn's rule,
with its numbers (one foreach lerp by the Python float 1 - decay, the same kernel and operands). BatchNorm's
running statistics are averaged too (AveragedModel's use_buffers=True), so the average is a model that can be
evaluated and exported as it is (no BatchNorm re-estimation pass). Only the student is averaged: projectors are
training-time only. Under DDP every rank keeps one; its parameters are the same on every rank and rank 0's
buffers are the ones checkpointed, evaluated (broadcast first) and exported, as for the student itself.

The update is pekd's own rather than AveragedModel.update_parameters, for two reasons:
- AveragedModel keeps its step counter n_averaged as a tensor and copies it to the device for every
  (device, dtype) group on every update (two host->device copies from pageable memory per step: syncs). Here
  the count is a Python int on the host; nothing in the update reads or writes device memory from the host.
- AveragedModel averages integer buffers too, in float, and copies the result back: num_batches_tracked
  truncates and stays at 1 forever. Here integer buffers are copied from the student (a count is not averaged).
AveragedModel is kept as the container: a deep copy of the student plus n_averaged, in the state-dict layout
checkpoints of earlier pekd versions have.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class StudentEMA:
    def __init__(self, student: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(student, use_buffers=True)
        self.averaged.requires_grad_(False)
        self.updates = 0  # the host's copy of n_averaged, which stays on the CPU

    @property
    def model(self) -> nn.Module:
        """The averaged student, a backbone like the student (evaluated and exported as ema.pt)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        mine = [t.detach() for t in itertools.chain(self.model.parameters(), self.model.buffers())]
        theirs = [t.detach() for t in itertools.chain(student.parameters(), student.buffers())]
        floats = [j for j, t in enumerate(mine) if t.is_floating_point()]
        others = [j for j, t in enumerate(mine) if not t.is_floating_point()]
        if self.updates == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            if floats:
                torch._foreach_lerp_([mine[j] for j in floats], [theirs[j] for j in floats], 1 - self.decay)
            if others:
                torch._foreach_copy_([mine[j] for j in others], [theirs[j] for j in others])
        self.updates += 1
        self.averaged.n_averaged.fill_(self.updates)  # a CPU tensor: recorded in the state dict, never on device

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
        self.updates = int(self.averaged.n_averaged)
