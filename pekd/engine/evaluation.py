"""Evaluation of the exported student: exact sharded top-1/top-5, with rank 0's buffers, stoppable between batches.

Rank 0's buffers: under DDP every rank's BatchNorm running statistics follow its own micro-batches (DDP copies
rank 0's only at the start of a train-mode forward, and evaluation runs the unwrapped student), while best.pt and
student.pt are rank 0's. Broadcasting them first makes the reported accuracy exactly that of the exported model.
Training is unchanged by it: train-mode BatchNorm normalises with batch statistics, and the next DDP forward would
broadcast the same values anyway.

Stoppable: an ImageNet evaluation takes minutes, and SLURM's USR2 comes a couple of minutes before the kill. Alone,
the stop flag is a host value, looked at before every batch. Under DDP the ranks agree on it every `agree_every`
batches (the trainer passes trainer.sync_every_steps, as the training step does) in one small all-reduce, whose
result the host must read: an agreement per batch would wait for the device after every batch. A stopped
evaluation returns None at once; the trainer checkpoints before it evaluates, so nothing is lost.

The hit counts stay on the device and are read once, at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pekd.data.batch import Batch
from pekd.engine.distributed import all_reduce_max, all_reduce_sum

log = logging.getLogger("pekd")


class Inputs:
    """Batch -> (model input, batch with its images and labels on the device): normalised, in the run's memory
    format. The student, the online teacher and evaluation all get this same tensor. Bank rows (features) go to the
    device with the images; index and view stay where the loader made them (the host): only bookkeeping reads
    them. Copies are no-ops for a batch the prefetch already put on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 memory_format: torch.memory_format) -> None:
        self.device, self.memory_format = device, memory_format
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, Batch]:
        batch = Batch(batch.images.to(self.device, non_blocking=True), batch.labels.to(self.device, non_blocking=True),
                      batch.index, batch.view,
                      None if batch.features is None else batch.features.to(self.device, non_blocking=True))
        x = batch.images
        if x.dtype == torch.uint8:  # pipelines may also hand over normalised floats
            x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format), batch


def buffer_checksum(module: nn.Module) -> float:
    """A fingerprint of the module's buffers (their float64 sum): logged per rank, to show when they differ."""
    sums = [b.detach().double().sum() for b in module.buffers()]
    return torch.stack(sums).sum().item() if sums else 0.0


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers on every rank (no-op alone)."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src=0)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], inputs: Inputs,
             autocast: Callable[[], AbstractContextManager[Any]],
             should_stop: Callable[[], bool] = lambda: False, agree_every: int = 1,
             observe: Callable[[torch.Tensor, Batch, torch.Tensor, torch.Tensor], None] | None = None,
             ) -> tuple[float, float] | None:
    """Top-1/top-5 in percent over every rank's unpadded shard (counts are summed, so the result is exact), or
    None when a stop was requested on any rank. Shards may differ by a batch: a rank whose shard is done keeps
    joining the agreements until every rank's is. `observe(input, batch, features, logits)` sees every batch
    (trainer.analyze: pekd.science.fused_analysis takes its diagnostics from this pass)."""
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        own = buffer_checksum(model)
        broadcast_buffers(model)
        log.info("evaluating with rank 0's buffers: this rank's checksum %.17g, rank 0's %.17g", own,
                 buffer_checksum(model))
    was_training = model.training
    model.eval()
    try:
        hits = torch.zeros(2, device=inputs.device, dtype=torch.int64)  # top-1 and top-5 hits, on the device
        images, done, it = 0, False, iter(batches)
        while True:
            for _ in range(agree_every if distributed else 1):
                batch = None if done else next(it, None)
                if batch is None:
                    done = True
                    break
                x, batch = inputs(batch)
                with autocast():
                    feat, logits = model(x)
                if observe is not None:
                    observe(x, batch, feat, logits)
                top5 = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
                hit = top5 == batch.labels[:, None]
                hits += torch.stack([hit[:, 0].sum(), hit.any(1).sum()])
                images += len(batch)
            if distributed:
                flags = torch.tensor([float(should_stop()), float(not done)], device=inputs.device)
                stop, more = all_reduce_max(flags).tolist()
            else:
                stop, more = should_stop(), not done
            if stop:
                return None
            if not more:
                break
    finally:
        model.train(was_training)
    counts = all_reduce_sum(torch.cat([hits, torch.tensor([images], dtype=torch.int64).to(inputs.device)]))
    top1, top5, n = counts.tolist()
    n = max(n, 1)
    return 100.0 * top1 / n, 100.0 * top5 / n
