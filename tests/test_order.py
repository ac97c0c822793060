"""The global sample order: every index once per epoch, any world size, any resume point."""

import numpy as np
import pytest

from pekd.data.order import Plan, epoch_permutation, eval_shard, rank_micro_batches, steps_per_epoch
from pekd.errors import PekdError


def consumed(n, seed, epoch, plan, start_step=0):
    perm = epoch_permutation(n, seed, epoch)
    per_rank = [rank_micro_batches(perm, plan, r, start_step) for r in range(plan.world)]
    # interleave as the step loop does: step s, micro j, rank r
    out = []
    for i in range(len(per_rank[0])):
        for r in range(plan.world):
            out.extend(per_rank[r][i].tolist())
    return out


@pytest.mark.parametrize("world,max_micro", [(1, 0), (2, 0), (4, 4), (2, 3)])
def test_every_index_once_per_epoch(world, max_micro):
    n, b = 103, 16
    plan = Plan.make(b, world, max_micro)
    seen = consumed(n, 7, 3, plan)
    assert len(seen) == steps_per_epoch(n, b) * b
    assert len(set(seen)) == len(seen)
    assert seen == epoch_permutation(n, 7, 3)[: len(seen)].tolist()  # same global order on any world size


def test_resume_on_another_world_size_continues_the_same_order():
    n, b = 96, 8
    full = consumed(n, 1, 0, Plan.make(b, 2))
    first = full[: 5 * b]
    rest = consumed(n, 1, 0, Plan.make(b, 1), start_step=5)
    assert first + rest == full


def test_orders_differ_by_epoch_and_seed():
    a, b, c = (epoch_permutation(50, s, e) for s, e in [(0, 0), (0, 1), (1, 0)])
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(a, epoch_permutation(50, 0, 0))


def test_plan_rejects_indivisible_batch():
    with pytest.raises(PekdError, match="not divisible by world size 3"):
        Plan.make(64, 3)
    assert Plan.make(64, 2, max_micro=8).accum == 4


def test_eval_shards_cover_exactly():
    parts = [eval_shard(10, r, 3) for r in range(3)]
    assert np.concatenate(parts).tolist() == list(range(10))
