"""What a bank build will take, said before it starts: its views, and its time measured on real batches.

A bank of every CIFAR view is 162 teacher passes over the data set (CIFAR-100 with resnet32x4: 50,000 x 162 rows of
256 fp16 = 4.1 GB); a user deciding between it and the online teacher needs the figure before the hours are spent.
The size and the free space are pekd.teacher.allocation's line (a bank its disk cannot hold is refused there); the
time is extrapolated from timing the teacher on a few batches exactly as the build runs it, warm-up excluded.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pekd.data.pipelines import Passes
from pekd.teacher.bank_views import BankViews
from pekd.teacher.row_writer import RowWriter, bank_row


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def images_per_second(passes: Passes, teacher: Any, spec: dict[str, Any], batches: list[np.ndarray]) -> float:
    """The teacher's rate over view 0 of `batches`, rows written as the build writes them (into memory); the first
    batch is run once untimed first (JIT, workers, first touches)."""
    for batch in passes.run(0, batches[:1]):
        teacher(batch)
    rows = np.zeros((1, max(int(b.max()) for b in batches) + 1, spec["shape"][2]), dtype=spec["dtype"])
    writer = RowWriter(rows, spec["dtype"])  # type: ignore[arg-type]
    timed, t0 = 0, time.perf_counter()
    for batch in passes.run(0, batches):
        writer.add(0, batch.index.cpu().numpy(), bank_row(*teacher(batch), spec))
        timed += len(batch)
    writer.flush()
    return timed / max(time.perf_counter() - t0, 1e-9)


def views_line(views: BankViews) -> str:
    """Which views the bank holds, and whether training on it is the online recipe."""
    return f"  views: {views.K} per image; {views.note()}"


def time_line(spec: dict[str, Any], rate: float, eval_images: int, world: int) -> str:
    """The build's expected time: every (view, sample) row and the teacher's evaluation, at `rate` per process."""
    k, n, _ = spec["shape"]
    seconds = (k * n + eval_images) / rate
    return (f"  expected precompute: {k} x {n} + {eval_images} eval images at {rate:.0f} images/s per process = "
            f"{duration(seconds)} on 1 process" + (f", about {duration(seconds / world)} on {world} processes"
                                                   if world > 1 else ""))
