"""Content checksums of a feature bank: one sha256 per chunk, checked when a run opens the bank.

A features.bin of the right size but the wrong bytes -- zeroed in place, overwritten by another build, a copy
gone bad on disk -- is otherwise served without a word: training distills against zeros (`loss_feat` the same at
every step) or against another teacher. The build hashes each finished chunk (the unit it writes and resumes) the
moment its rows are flushed, the manifest keeps the digests, and `BankTeacher.open` recomputes them before step 1.

Why at open, not lazily as chunks are first read: training draws samples in a global shuffled order, so each
rank touches nearly every chunk within its first few steps (ImageNet, 1,251 chunks of 1,024: ten batches of 256
touch 87% of them) -- lazily costs the same bytes, but on the training thread, where `batch.index` is already on
the GPU, or in DataLoader workers, whose exceptions reach the trainer wrapped in a worker traceback. At open the
ranks split the chunks between them and agree on the result, so every rank stops with the same one line before
the run directory is touched. sha256 runs at ~1.4 GB/s on one core (OpenSSL, SHA extensions): see
docs/pipelines-and-bank.md for what that costs per bank.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from pekd.errors import PekdError

log = logging.getLogger("pekd")


def chunk_span(chunk: int, size: int, n: int) -> tuple[int, int]:
    """Samples [start, stop) of chunk `chunk` of `size` samples in a bank of n."""
    return chunk * size, min((chunk + 1) * size, n)


def chunk_digest(features: np.ndarray, chunk: int, size: int) -> str:
    """sha256 over the chunk's rows of view 0, then view 1, ...: every byte the build wrote for this chunk."""
    start, stop = chunk_span(chunk, size, features.shape[1])
    h = hashlib.sha256()
    for k in range(features.shape[0]):
        h.update(np.ascontiguousarray(features[k, start:stop]))  # a view of the memmap: no copy
    return h.hexdigest()


def rank_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def damaged_chunks(features: np.ndarray, digests: list[str], size: int) -> list[int]:
    """Chunks whose bytes differ from their recorded digest. Under torch.distributed each rank hashes every
    world-th chunk and the ranks exchange what they found, so all of them return the same list."""
    rank, world = rank_world()
    mine = [c for c in range(rank, len(digests), world) if chunk_digest(features, c, size) != digests[c]]
    if world == 1:
        return mine
    found: list[list[int] | None] = [None] * world
    dist.all_gather_object(found, mine)
    return sorted(c for part in found for c in (part or []))


def verify(folder: Path, manifest: dict[str, Any], features: np.ndarray) -> None:
    """Raise one PekdError naming the damaged chunks (samples and views) if features.bin differs from the bytes
    the build recorded; a bank of an older format, without checksums, is served with one warning."""
    rebuild = (f"move the bank aside (mv {folder} {folder}.damaged) and rebuild it with `python -m pekd.precompute "
               f"<this run's overrides> teacher.bank={folder}`")
    if "checksums" not in manifest:
        if rank_world()[0] == 0:
            log.warning("feature bank %s has no content checksums (format %s, written by an older pekd): its rows "
                        "are served unverified; to have them checked, %s", folder, manifest["format"], rebuild)
        return
    size, (k, n, _) = int(manifest["chunk"]), manifest["shape"]
    bad = damaged_chunks(features, manifest["checksums"]["sha256"], size)
    if not bad:
        return
    start, stop = chunk_span(bad[0], size, n)
    others = f" (and {len(bad) - 1} more of its {len(manifest['checksums']['sha256'])} chunks)" if len(bad) > 1 else ""
    raise PekdError(f"feature bank {str(folder)!r} is damaged: chunk {bad[0]} (samples {start} to {stop - 1}, all "
                    f"{k} views){others} differs from the sha256 recorded when it was built, so features.bin was "
                    f"changed after the bank was sealed (overwritten, zeroed or damaged on disk); {rebuild}")
