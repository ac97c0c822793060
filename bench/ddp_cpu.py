"""1-process vs 2-process DDP (gloo) step time on this CPU, same global batch: for the record, not a scaling claim.

`python -m bench.ddp_cpu [--model resnet8x4 --batch 64]`. One process uses all cores; two processes use one
thread each and all-reduce gradients over gloo. Both train PEFD (student + 3 projectors in one DDP module).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from pekd.config import MethodConfig
from pekd.methods import TrainModule, build_method
from pekd.models import build_model, feature_dim


def worker(rank: int, world: int, args: argparse.Namespace, port: int, out: mp.Queue) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    d_t = feature_dim(args.teacher)
    model = build_model(args.model, 100, 3)
    module = TrainModule(model, build_method(MethodConfig(name="pefd", q=3), model.feature_dim, d_t))
    module = module.to(memory_format=torch.channels_last)
    net = DDP(module) if world > 1 else module
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    b = args.batch // world
    x = torch.randn(b, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y, f_t = torch.randint(0, 100, (b,)), torch.rand(b, d_t)
    times = []
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        _, losses = net(x, y, f_t, None)
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        out.put(statistics.median(times))
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=worker, args=(r, world, args, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    result = q.get(timeout=1800)
    for p in procs:
        p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet8x4")
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    one, two = measure(1, args), measure(2, args)
    print(f"PEFD {args.model} (+3 projectors), global batch {args.batch}, {args.size}px, fp32, gloo\n")
    print("| processes | s / step | images/s | ratio to 1 process |\n|---:|---:|---:|---:|")
    for n, t in ((1, one), (2, two)):
        print(f"| {n} | {t:.3f} | {args.batch / t:.0f} | {t / one:.3f} |")


if __name__ == "__main__":
    main()
