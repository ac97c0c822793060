"""Copy the next micro-batch to the GPU while the current step runs.

On CUDA the images, labels and bank rows (Batch.features) of the batch after the current one are copied on a
side stream with non_blocking=True, and the compute stream waits for that copy only when the batch is used. Such
a copy is asynchronous only from page-locked memory: the torch pipeline's DataLoader pins its batches
(pin_memory=True on CUDA, through Batch.pin_memory); a tensor that arrives unpinned (an FFCV or DALI CPU batch)
is pinned here first -- one host copy into torch's cached pinned pool -- because a copy from pageable memory
would block the training thread until the device had it. index and view stay on the host, where the audit reads
them. Tensors already on the device (data.pipeline=device's images and labels) are used where they are; only a
bank's rows travel. Elsewhere (CPU) the batches pass through unchanged: there is nothing to overlap.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pekd.data.batch import Batch


def prefetch(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    return _cuda_prefetch(batches, device) if device.type == "cuda" else batches


def _to_device(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    if t is None or t.device == device:
        return t
    if not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _cuda_prefetch(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    side = torch.cuda.Stream(device)

    def stage(b: Batch | None) -> Batch | None:
        if b is None:
            return None
        with torch.cuda.stream(side):
            return Batch(_to_device(b.images, device), _to_device(b.labels, device), b.index, b.view,
                         _to_device(b.features, device))

    staged = stage(next(batches, None))
    while staged is not None:
        current = torch.cuda.current_stream(device)
        current.wait_stream(side)
        for t in (staged.images, staged.labels, staged.features):
            if t is not None:  # the caching allocator must not reuse them while the compute stream reads
                t.record_stream(current)
        ready, staged = staged, stage(next(batches, None))
        yield ready
