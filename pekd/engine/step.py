"""What one optimizer step computes: the gradients of a global step's micro-batches on this rank.

Forward under autocast, backward outside it (PyTorch's AMP guidance: the backward runs each op in the dtype its
forward chose); inner micro-steps skip DDP's all-reduce (no_sync), the last one reduces. Nothing here reads a
device value on the host: the losses come back as device tensors for the trainer to check and log.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pekd.data.batch import Batch
from pekd.engine.distributed import all_reduce_sum
from pekd.engine.evaluation import Inputs
from pekd.engine.precision import autocast
from pekd.errors import PekdError

StepResult = tuple[dict[str, torch.Tensor], torch.Tensor, int]


def micro_plan(sizes: list[int], lockstep: bool) -> tuple[list[int], int]:
    """Which of a step's micro-batches (of `sizes` samples on this rank) run a forward and backward, and which of
    them reduces the gradients (DDP's sync). Normally the non-empty ones, the last of them syncing: an empty
    micro-batch adds nothing. lockstep (SyncBatchNorm under DDP): every one, empty or not, the last syncing on
    every rank -- each SyncBatchNorm forward and backward is a collective, so a rank that skipped a micro-batch
    data.on_corrupt=skip emptied would make fewer of them than its peers and the job would hang. An empty
    micro-batch then runs with zero samples: SyncBatchNorm joins its peers' collectives with a count of zero."""
    if lockstep:
        return list(range(len(sizes))), len(sizes) - 1
    run = [j for j, k in enumerate(sizes) if k]
    return run, run[-1] if run else -1


def step_seed(seed: int, rank: int, global_step: int) -> int:
    """Per-rank, per-step torch seed: resumption needs no saved RNG state and survives a world-size change."""
    return (seed * 1_000_003 + rank * 10_007 + global_step) % (2**63 - 1)


class GradientStep:
    """model: what the step calls (the training module, wrapped in DDP and/or compiled); ddp: the DDP wrapper
    (None alone), for no_sync; graphed: model and teacher replay CUDA graphs (trainer.compile=reduce-overhead)."""

    def __init__(self, model: nn.Module, ddp: DDP | None, teacher: Any, inputs: Inputs, scaler: torch.amp.GradScaler,
                 dtype: torch.dtype | None, world: int, count_skips: bool, lockstep: bool = False,
                 graphed: bool = False) -> None:
        self.model, self.ddp, self.teacher, self.inputs, self.scaler = model, ddp, teacher, inputs, scaler
        self.dtype, self.world, self.graphed = dtype, world, graphed
        self.count_skips = count_skips  # data.on_corrupt=skip under DDP: micro-batches may be short on any rank
        self.lockstep = lockstep  # SyncBatchNorm under DDP: every rank runs every micro-batch (micro_plan)

    def __call__(self, micro: list[Batch], global_step: int) -> StepResult:
        """Summed loss terms (each term times its images), correct count and images over this rank's micro-batches
        of global step `global_step` + 1.

        The step's loss is the mean over the samples really there, across micro-batches and ranks: micro-batch j
        (n_j samples) adds its mean loss times n_j * world / N, N being the step's samples on all ranks (DDP
        averages gradients over the world). With data.on_corrupt=skip a micro-batch can come out shorter, and
        mean / accum would weigh its samples more than the others. With nothing skipped the divisor
        N / (n_j * world) is exactly accum. An empty micro-batch adds nothing (micro_plan says whether it runs)."""
        sizes = [len(b) for b in micro]
        total = self._step_samples(sum(sizes), global_step)
        run, last = micro_plan(sizes, self.lockstep)
        terms: dict[str, torch.Tensor] = {}
        correct, n = torch.zeros((), device=self.inputs.device), 0
        for j in run:
            if sizes[j]:
                losses, c, k = self._micro_step(micro[j], sync=j == last, divisor=total / (sizes[j] * self.world))
            else:  # the shape of a sample comes from a non-empty micro-batch of this rank (_step_samples: one is)
                like = micro[next(i for i, size in enumerate(sizes) if size)]
                losses, c, k = self._micro_step(empty_like(like), sync=j == last, divisor=None)
            for name, v in losses.items():
                if k:  # an empty micro-batch's mean losses are NaN (0 / 0): it adds nothing
                    terms[name] = terms.get(name, 0) + v * k
            correct, n = correct + c, n + k
        return terms, correct, n

    def _micro_step(self, batch: Batch, sync: bool, divisor: float | None) -> StepResult:
        """divisor None: an empty micro-batch run only for its collectives; its loss is made an exact 0 whose
        backward still passes every layer (nan_to_num's gradient at its NaN is 0), so the gradients are 0."""
        x, batch = self.inputs(batch)
        if self.graphed:  # a new step: the graphs' outputs of the last one (read and copied by now) may be reused
            torch.compiler.cudagraph_mark_step_begin()
        ctx = self.ddp.no_sync() if (not sync and self.ddp is not None) else nullcontext()
        with ctx:
            with autocast(self.inputs.device, self.dtype):
                feat_t = logits_t = None
                if self.teacher is not None:
                    feat_t, logits_t = self.teacher(x, batch)
                logits, losses = self.model(x, batch.labels, feat_t, logits_t)
                total = sum(losses.values())
            loss = total.nan_to_num(0.0) * 0.0 if divisor is None else total / divisor
            self.scaler.scale(loss).backward()
        correct = (logits.argmax(1) == batch.labels).sum()
        return {k: v.detach() for k, v in losses.items()}, correct, len(batch)

    def _step_samples(self, local: int, global_step: int) -> float:
        """The global step's samples over all ranks. Only data.on_corrupt=skip can shorten a micro-batch; otherwise
        every rank has its full share and the count needs no all-reduce (nor the device sync reading it)."""
        device = self.inputs.device
        if self.count_skips:
            counts = torch.tensor([local, local == 0], device=device, dtype=torch.float64)
            total, empty = all_reduce_sum(counts).tolist()
        else:
            total, empty = float(local * self.world), float(local == 0)
        if empty:
            raise PekdError(f"no readable image in a process's share of global step {global_step + 1} "
                            f"({int(empty)} of {self.world} processes): data.on_corrupt=skip left nothing to "
                            "train on; replace the corrupt files")
        return total


def empty_like(batch: Batch) -> Batch:
    """A batch of no samples shaped like `batch` (images keep their channels and size, so every layer accepts it)."""
    return Batch(batch.images[:0], batch.labels[:0], batch.index[:0], batch.view[:0],
                 None if batch.features is None else batch.features[:0])
