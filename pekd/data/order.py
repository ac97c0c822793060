"""The global sample order: which indices every rank reads at every step, as a pure function of the recipe.

Training consumes a seeded permutation of the dataset in global batches of `global_batch` samples. Global step s
takes perm[s*B:(s+1)*B]; that chunk is split into `accum` micro-steps of `world * micro` samples, and rank r's
share of micro-step j is a contiguous slice. Because the order depends only on (seed, epoch) and the global batch,
a run can resume at any step on any world size (the accumulation adapts) without repeating or skipping a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pekd.errors import PekdError


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The dataset order of one epoch: identical on every rank and every resume."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n).astype(np.int64)


@dataclass(frozen=True)
class Plan:
    """How a global batch is laid out over ranks and accumulation micro-steps."""

    global_batch: int
    world: int
    accum: int

    @property
    def micro(self) -> int:
        return self.global_batch // (self.world * self.accum)

    @staticmethod
    def make(global_batch: int, world: int, max_micro: int = 0) -> Plan:
        """Smallest accumulation count that divides the global batch evenly and fits max_micro (0: no cap)."""
        if global_batch % world:
            raise PekdError(f"global batch {global_batch} is not divisible by world size {world}; "
                            "choose data.batch_size as a multiple of the number of processes")
        per_rank = global_batch // world
        for accum in range(1, per_rank + 1):
            if per_rank % accum == 0 and (max_micro <= 0 or per_rank // accum <= max_micro):
                return Plan(global_batch, world, accum)
        raise AssertionError("unreachable: accum == per_rank always fits")


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Training drops the last incomplete global batch, so every step has the recipe's batch size."""
    return n // global_batch


def rank_micro_batches(perm: np.ndarray, plan: Plan, rank: int, start_step: int = 0) -> list[np.ndarray]:
    """Rank `rank`'s micro-batches for the rest of an epoch, from global step `start_step` on.

    Returned flat: accum consecutive entries form one optimizer step.
    """
    out = []
    m, w = plan.micro, plan.world
    for s in range(start_step, steps_per_epoch(len(perm), plan.global_batch)):
        chunk = perm[s * plan.global_batch:(s + 1) * plan.global_batch]
        for j in range(plan.accum):
            lo = (j * w + rank) * m
            out.append(chunk[lo:lo + m])
    return out


def eval_shard(n: int, rank: int, world: int) -> np.ndarray:
    """Contiguous, unpadded shard of an eval set: counts are all-reduced, so accuracy is exact."""
    lo, hi = n * rank // world, n * (rank + 1) // world
    return np.arange(lo, hi, dtype=np.int64)
