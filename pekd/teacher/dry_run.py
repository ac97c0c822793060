"""`python -m pekd.precompute ... --dry-run`: the bank's size and how long building it will take, writing nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pekd.data.sources import run_sources
from pekd.teacher import bank, chunks
from pekd.teacher.allocation import bank_bytes, human_bytes
from pekd.teacher.precompute import passes_for, setup, work_plan
from pekd.teacher.row_writer import RowWriter


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def dry_run(cfg: Any, sample_batches: int = 4) -> str:
    """The bank's size, and its precompute time extrapolated from timing a few real batches (writes nothing)."""
    # this process's own GPU, as init_distributed picks it: under torchrun every rank would otherwise time on cuda:0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local % torch.cuda.device_count()) if torch.cuda.is_available() else \
        torch.device("cpu")
    source, teacher, spec = setup(cfg, device)
    k, n, d = spec["shape"]
    size = bank_bytes(spec)
    bs = cfg.data.eval_batch_size
    sampled = min(n, bs * sample_batches)
    [(_, _, batches)] = work_plan([0], sampled, n, 1, bs)
    passes = passes_for(source, cfg)
    for batch in passes.run(0, batches[:1]):  # warm-up (JIT, workers, first touches), not timed
        teacher(batch)
    rows = np.zeros((1, sampled, d), dtype=spec["dtype"])  # written as the build writes them, into memory
    writer = RowWriter(rows, spec["dtype"])  # type: ignore[arg-type]
    timed, t0 = 0, time.perf_counter()
    for batch in passes.run(0, batches):
        feat, _ = teacher(batch)
        writer.add(0, batch.index.cpu().numpy(), feat)
        timed += len(batch)
    writer.flush()
    rate = timed / (time.perf_counter() - t0)
    val_n = len(run_sources(cfg)[1])
    seconds = (k * n + val_n) / rate
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return "\n".join([
        f"feature bank {Path(cfg.teacher.bank).resolve() if cfg.teacher.bank else '(teacher.bank unset)'}",
        f"  teacher {cfg.teacher.name} -> features [K={k}, N={n}, d={d}] {spec['dtype']}: {human_bytes(size)}"
        f" in {bank.FEATURES}, {chunks.count(spec)} chunks of {spec['chunk']}",
        f"  views: augment={cfg.data.augment} image_size={cfg.data.image_size} bank.seed={cfg.bank.seed}; "
        f"amp={cfg.trainer.amp} channels_last={cfg.trainer.channels_last}",
        f"  measured {rate:.0f} images/s on one {device.type} process ({timed} images, batch {bs})",
        f"  expected precompute: {k} x {n} + {val_n} eval images = {duration(seconds)} on 1 process"
        + (f", about {duration(seconds / world)} on {world} processes" if world > 1 else ""),
    ])
