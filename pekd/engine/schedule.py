"""The learning-rate schedule, stepped once per optimizer step and built from torch's own schedulers.

trainer.schedule=step is MultiStepLR with the epoch milestones converted to steps (epoch m -> m * steps_per_epoch):
without warmup the lr at every step is exactly that of MultiStepLR stepped once per epoch (the paper's recipes),
since a step-counting MultiStepLR multiplies by gamma at the same steps and leaves the lr alone in between.
trainer.schedule=cosine is CosineAnnealingLR to 0 over the steps after the warmup. trainer.warmup_epochs > 0
puts LinearLR (from lr * warmup_start_factor to lr) in front with SequentialLR, which restarts the main schedule's
count at the warmup's end: the step schedule's milestones are shifted by the warmup so they stay at their epochs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR


def warmup_steps(tc: Any, steps_per_epoch: int) -> int:
    return round(tc.warmup_epochs * steps_per_epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, tc: Any, steps_per_epoch: int) -> LRScheduler:
    """The schedule of `tc` (the trainer config) for epochs of `steps_per_epoch` optimizer steps."""
    warmup = warmup_steps(tc, steps_per_epoch)
    if tc.schedule == "cosine":
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=max(tc.epochs * steps_per_epoch - warmup, 1))
    else:
        main = MultiStepLR(optimizer, [m * steps_per_epoch - warmup for m in tc.milestones], tc.lr_gamma)
    if not warmup:
        return main
    ramp = LinearLR(optimizer, start_factor=tc.warmup_start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def scheduler_state(scheduler: LRScheduler) -> dict[str, Any]:
    """state_dict() with MultiStepLR's milestone Counter as a dict: weights_only loading refuses a Counter."""
    return _convert(scheduler.state_dict(), dict)


def load_scheduler_state(scheduler: LRScheduler, state: dict[str, Any]) -> None:
    scheduler.load_state_dict(_convert(state, Counter))


def _convert(state: dict[str, Any], kind: type) -> dict[str, Any]:
    """A copy with every `milestones` mapping (SequentialLR nests its schedulers' states) made a `kind`."""
    out = dict(state)
    if isinstance(out.get("milestones"), dict):
        out["milestones"] = kind(out["milestones"])
    if "_schedulers" in out:
        out["_schedulers"] = [_convert(s, kind) for s in out["_schedulers"]]
    return out
