"""`python -m bench.teacher_casts [--teacher resnet32x4 --batch 64 --rounds 5]`: the frozen teacher's weight casts.

Under autocast, a frozen teacher (weights without grad, so autocast's cast cache skips them) re-cast every conv and
linear weight to the AMP dtype on every forward. pekd.teacher.online keeps them in that dtype once. This counts the
dtype casts (aten::_to_copy) of one teacher forward under bf16 autocast both ways, times both forwards interleaved,
and measures what the choice of what to keep in bf16 does to the features: the conv/linear weights only (pekd's
choice: the very values autocast computed, so the difference to today's teacher must be exactly 0), or the whole
model, BatchNorm's running statistics included (the difference a bf16 running variance makes).

On a CPU without native bf16 kernels (AVX2) bf16 convolutions are emulated and slow, so the casts are a small share
of the time there; the count is what carries over to a GPU, where each cast is a kernel launch.
"""

from __future__ import annotations

import argparse
import copy

import torch

from bench.timing import interleaved, table
from pekd.teacher.online import OnlineTeacher
from tests.test_teacher_casts import CastCount, cast_parameters, fresh


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| over the batch."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=0, help="also time the two forwards over this many rounds")
    a = ap.parse_args()
    model = fresh(a.teacher)
    today = copy.deepcopy(model).to(memory_format=torch.channels_last)
    whole = copy.deepcopy(today).to(torch.bfloat16)  # BatchNorm in bf16 too
    teacher = OnlineTeacher(model, channels_last=True)
    x = torch.randn(a.batch, 3, a.size, a.size).contiguous(memory_format=torch.channels_last)
    weights = cast_parameters(today)

    counts = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want_feat, want_logits = today(x)
        got_feat, got_logits = teacher(x, None)
        whole_feat, _ = whole(x)
        for name, fn in (("fp32 weights (today)", lambda: today(x)), ("kept in bf16", lambda: teacher(x, None))):
            with CastCount(weights) as count:
                fn()
            counts[name] = count
        times = interleaved({"fp32 weights (today)": lambda: today(x), "kept in bf16": lambda: teacher(x, None)},
                            rounds=a.rounds, reps=1, warmup=1) if a.rounds else {}

    print(f"\n{a.teacher} teacher forward under bf16 autocast, batch {a.batch}, {a.size} px, "
          f"{torch.get_num_threads()} threads\n")
    print("| teacher weights | dtype casts per forward | of them weight casts |\n|---|---:|---:|")
    for name, c in counts.items():
        print(f"| {name} | {c.casts} | {c.weight_casts} |")
    if times:
        print(f"\nmedian of {a.rounds} interleaved rounds:\n\n{table(times, 'fp32 weights (today)', a.batch)}")
    exact = torch.equal(want_feat, got_feat) and torch.equal(want_logits, got_logits)
    print(f"\nfeatures, kept in bf16 vs today: {'bit-identical' if exact else 'DIFFERENT'} "
          f"(max relative difference {relative_difference(got_feat, want_feat):.2e})")
    print(f"features, whole model in bf16 (BatchNorm statistics too) vs today: max relative difference "
          f"{relative_difference(whole_feat, want_feat):.2e}")


if __name__ == "__main__":
    main()
