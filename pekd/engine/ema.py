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

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class Pairs:
    """The averaged model's tensors and the student's, paired in order and split into floating-point ones (averaged)
    and the rest (copied), built once: walking both modules and splitting the lists every step cost the host ~2
    list passes per tensor per step for nothing (the tensors are the same objects for the whole run; loading a
    checkpoint copies into them in place)."""

    def __init__(self, averaged: nn.Module, student: nn.Module) -> None:
        self.student = student
        self.mine = [*averaged.parameters(), *averaged.buffers()]  # the tensors themselves, not detached aliases:
        self.theirs = [*student.parameters(), *student.buffers()]  # a parameter's .data may be swapped

        floats = [t.is_floating_point() for t in self.mine]
        self.mine_floats = [t for t, f in zip(self.mine, floats, strict=True) if f]
        self.their_floats = [t for t, f in zip(self.theirs, floats, strict=True) if f]
        self.mine_others = [t for t, f in zip(self.mine, floats, strict=True) if not f]
        self.their_others = [t for t, f in zip(self.theirs, floats, strict=True) if not f]


class StudentEMA:
    def __init__(self, student: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(student, use_buffers=True)
        self.averaged.requires_grad_(False)
        self.updates = 0  # the host's copy of n_averaged, which stays on the CPU
        self.pairs = Pairs(self.model, student)

    @property
    def model(self) -> nn.Module:
        """The averaged student, a backbone like the student (evaluated and exported as ema.pt)."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        if student is not self.pairs.student:  # the lists are built once per student, not every step
            self.pairs = Pairs(self.model, student)
        p = self.pairs
        if self.updates == 0:
            torch._foreach_copy_(p.mine, p.theirs)
        else:
            if p.mine_floats:
                torch._foreach_lerp_(p.mine_floats, p.their_floats, 1 - self.decay)
            if p.mine_others:
                torch._foreach_copy_(p.mine_others, p.their_others)
        self.updates += 1
        self.averaged.n_averaged.fill_(self.updates)  # a CPU tensor: recorded in the state dict, never on device

    def state_dict(self) -> dict[str, Any]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state)
        self.updates = int(self.averaged.n_averaged)
