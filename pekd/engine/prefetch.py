"""Copy the next micro-batch to the GPU while the current step runs.

On CUDA the images and labels of the batch after the current one are copied on a side stream (non_blocking: an
asynchronous copy where the loader pinned its memory, as the torch pipeline does on CUDA), and the compute stream
waits for that copy only when the batch is used. index and view stay on the host, where the audit and a feature
bank read them. Elsewhere (CPU) the batches pass through unchanged: there is nothing to overlap.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pekd.data.batch import Batch


def prefetch(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    return _cuda_prefetch(batches, device) if device.type == "cuda" else batches


def _cuda_prefetch(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    side = torch.cuda.Stream(device)

    def stage(b: Batch | None) -> Batch | None:
        if b is None:
            return None
        with torch.cuda.stream(side):
            return Batch(b.images.to(device, non_blocking=True), b.labels.to(device, non_blocking=True), b.index,
                         b.view)

    staged = stage(next(batches, None))
    while staged is not None:
        current = torch.cuda.current_stream(device)
        current.wait_stream(side)
        for t in (staged.images, staged.labels):
            t.record_stream(current)  # the caching allocator must not reuse them while the compute stream reads
        ready, staged = staged, stage(next(batches, None))
        yield ready
