"""The periodic check on the hot path: were the losses finite, and has any rank been asked to stop?

Reading a device value on the host waits for the device to finish everything queued, so the training step must
not do it every step. The steps' loss terms are kept (on the device) since the last check, and every
trainer.sync_every_steps steps -- and at log steps, checkpoints, max_steps and epoch ends, which read the device
anyway -- one all-reduce (max) over the ranks brings back two flags: a stop was requested on some rank, and a
loss was non-finite on some rank. Every rank decides at the same steps (they are a function of the global step
only), so the ranks always agree on where to stop; a stop request waits for the next check, up to
sync_every_steps steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pekd.engine.distributed import all_reduce_max
from pekd.engine.progress import Progress


def check_due(tc: Any, p: Progress, steps: int) -> bool:
    """Whether the step about to be taken at `p` ends with a check (the same answer on every rank): every
    sync_every_steps steps, and wherever a device read happens anyway or a checkpoint may follow (log steps,
    the epoch's last step, max_steps, ckpt_every_steps)."""
    g = p.global_step + 1
    return (g % tc.sync_every_steps == 0 or g % tc.log_every_steps == 0 or p.step_in_epoch + 1 == steps
            or bool(tc.max_steps and g >= tc.max_steps)
            or bool(tc.ckpt_every_steps and g % tc.ckpt_every_steps == 0))


@dataclass(frozen=True)
class StepLosses:
    epoch: int
    step_in_epoch: int  # 0-based index of the step in its epoch
    global_step: int  # the step's number, counted from 1
    terms: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Verdict:
    stop: bool  # some rank was asked to stop
    non_finite: str | None  # where the first non-finite loss was, when there was one on some rank


class PendingChecks:
    """The loss terms of the steps since the last check."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps: list[StepLosses] = []

    def add(self, p: Progress, terms: dict[str, torch.Tensor]) -> None:
        """Record the losses of the step about to be taken at `p` (before its counters move)."""
        self.steps.append(StepLosses(p.epoch, p.step_in_epoch, p.global_step + 1, terms))

    def agree(self, stop_requested: bool) -> Verdict:
        """One all-reduce and one device->host read for every step since the last check (a collective: every
        rank calls it at the same step)."""
        values = [v for s in self.steps for v in s.terms.values()]
        finite = torch.isfinite(torch.stack(values)).all() if values else torch.ones((), dtype=torch.bool,
                                                                                      device=self.device)
        flags = torch.stack([torch.tensor(float(stop_requested), device=self.device), (~finite).float()])
        stop, bad = all_reduce_max(flags).tolist()
        where = self._first_non_finite() if bad else None
        self.steps.clear()
        return Verdict(bool(stop), where)

    def _first_non_finite(self) -> str:
        for s in self.steps:
            bad = [k for k, v in s.terms.items() if not torch.isfinite(v).all()]
            if bad:
                return (f"at epoch {s.epoch}, step {s.step_in_epoch} (global step {s.global_step}): loss term "
                        f"{bad[0]!r} = {s.terms[bad[0]].item()}")
        first, last = self.steps[0], self.steps[-1]
        return f"on another rank, between global steps {first.global_step} and {last.global_step}"


def weights_finite(module: nn.Module) -> bool:
    """Whether every parameter is finite, with one device->host read: the max-abs norm over all of them (one
    fused multi-tensor kernel; NaN and inf propagate through it, and unlike the 2-norm it cannot overflow on
    finite weights), where a per-parameter check would wait for the device once per parameter."""
    params = [p.detach() for p in module.parameters()]
    return not params or bool(torch.isfinite(nn.utils.get_total_norm(params, float("inf"))))
