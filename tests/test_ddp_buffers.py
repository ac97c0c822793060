"""pekd.engine.distributed.data_parallel against real 2-process gloo DDP: without DDP's per-forward buffer broadcast
rank 0's weights and BatchNorm buffers -- what is checkpointed, exported and resumed from -- and every rank's weights
are bit for bit those of broadcast_buffers=True, and after evaluation's broadcast every rank holds rank 0's buffers;
with zero_grad(set_to_none=True) the gradients are DDP's bucket views after every backward, reached by one
copy-and-divide kernel per gradient, where zeroing them would add an accumulate and a division."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import ProfilerActivity, profile

from pekd.engine.distributed import data_parallel
from pekd.engine.evaluation import broadcast_buffers
from pekd.models import build_model
from tests.train_helpers import free_port

pytestmark = pytest.mark.slow
STEPS = 4
WATCHED = ("aten::mul", "aten::div_", "aten::add_", "aten::zero_")


def wrap(model: torch.nn.Module, mode: str) -> DDP:
    if mode == "default buffers":  # DDP's default, as the trainer had it
        return DDP(model, find_unused_parameters=False, gradient_as_bucket_view=True)
    return data_parallel(model, torch.device("cpu"))


def worker(rank: int, world: int, port: int, out: Path, mode: str, set_to_none: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # different initial weights per rank: DDP's construction must make them rank 0's
    model = build_model("resnet8", 10, 3)
    ddp = wrap(model, mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ops: Counter[str] = Counter()
    for step in range(STEPS):
        g = torch.Generator().manual_seed(1000 * step + rank)  # every rank its own samples
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            torch.nn.functional.cross_entropy(ddp(x)[1], y).backward()
        if step == STEPS - 1:  # a step after the first: gradients from a previous step existed
            ops.update({e.key: e.count for e in prof.key_averages() if e.key in WATCHED})
        storages = {p.grad.untyped_storage().data_ptr() for p in model.parameters()}
        opt.step()
        opt.zero_grad(set_to_none=set_to_none)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    broadcast_buffers(model)
    torch.save({"trained": trained, "evaluated": model.state_dict(), "ops": dict(ops),
                "grad_storages": len(storages), "params": len(list(model.parameters()))},
               out / f"{mode}-{set_to_none}-rank{rank}.pt")
    dist.destroy_process_group()


def run(tmp_path: Path, mode: str, set_to_none: bool = True) -> list[dict]:
    mp.spawn(worker, args=(2, free_port(), tmp_path, mode, set_to_none), nprocs=2)
    return [torch.load(tmp_path / f"{mode}-{set_to_none}-rank{r}.pt") for r in range(2)]


def test_without_the_buffer_broadcast_what_is_kept_is_unchanged(tmp_path):
    before, after = run(tmp_path, "default buffers"), run(tmp_path, "data_parallel")
    for k, v in before[0]["trained"].items():  # rank 0: weights and buffers
        assert torch.equal(after[0]["trained"][k], v), k
    buffers = [k for k in before[1]["trained"] if "running_" in k]
    for k, v in before[1]["trained"].items():  # rank 1: the same weights; its own statistics now
        if k not in buffers and "num_batches" not in k:
            assert torch.equal(after[1]["trained"][k], v), k
    assert any(not torch.equal(after[1]["trained"][k], before[1]["trained"][k]) for k in buffers), \
        "rank 1's statistics were not overwritten by rank 0's each forward"
    for rank in range(2):  # evaluation's broadcast: every rank evaluates rank 0's buffers, either way
        for k, v in before[0]["trained"].items():
            assert torch.equal(after[rank]["evaluated"][k], v), (rank, k)


def test_set_to_none_keeps_bucket_views_with_one_kernel_per_gradient(tmp_path):
    none, zeroed = run(tmp_path, "data_parallel"), run(tmp_path, "data_parallel", set_to_none=False)
    for r in (none[0], zeroed[0]):
        assert r["grad_storages"] <= 2 < r["params"], "the gradients are views of a bucket or two"
    params, mine, theirs = none[0]["params"], none[0]["ops"], zeroed[0]["ops"]
    # the forward's own ops (BatchNorm's counter increments, the loss) are the same in both; the reducer's are not
    assert mine.get("aten::mul", 0) - theirs.get("aten::mul", 0) == params, (mine, theirs)  # one copy-and-divide
    for op in ("aten::add_", "aten::div_"):  # against an accumulate and a division per gradient
        assert theirs.get(op, 0) - mine.get(op, 0) == params, (op, mine, theirs)
