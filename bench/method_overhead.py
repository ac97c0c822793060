"""PEFD (q=3) step time against CE-only step time: same student, same batch, teacher features given.

`python -m bench.method_overhead [--student resnet8x4 --batch 64 --size 32]`. Goal: ratio at most 1.05 -- the
projector ensemble is one fused GEMM (pekd/methods/projector.py), so its cost is small next to the backbone's.
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import interleaved, table
from pekd.config import MethodConfig
from pekd.methods import TrainModule, build_method
from pekd.models import build_model, feature_dim


def make_step(method_cfg: MethodConfig, student: str, d_t: int, x: torch.Tensor, y: torch.Tensor,
              f_t: torch.Tensor):
    torch.manual_seed(0)
    model = build_model(student, 100, 3)
    module = TrainModule(model, build_method(method_cfg, model.feature_dim, d_t)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        _, losses = module(x, y, f_t, None)
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    d_t = feature_dim(args.teacher)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (args.batch,), generator=g)
    f_t = torch.relu(torch.randn(args.batch, d_t, generator=g))
    times = interleaved({
        "ce": make_step(MethodConfig(name="ce"), args.student, d_t, x, y, f_t),
        "pefd q=1": make_step(MethodConfig(name="pefd", q=1), args.student, d_t, x, y, f_t),
        "pefd q=3": make_step(MethodConfig(name="pefd", q=3), args.student, d_t, x, y, f_t),
    }, rounds=args.rounds)
    print(f"student {args.student}, d_s={feature_dim(args.student)} -> d_t={d_t}, batch {args.batch}, "
          f"{args.size}px, {torch.get_num_threads()} threads, fp32\n")
    print(table(times, "ce", unit_items=args.batch))
    print(f"\nPEFD q=3 / CE step-time ratio: {times['pefd q=3'] / times['ce']:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
