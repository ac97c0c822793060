"""AMP and memory format on this CPU: fp32 vs bf16 autocast, contiguous vs channels_last, one training step.

`python -m bench.amp_cpu`. Why it exists: trainer.amp=auto picks bf16 on a CPU only where oneDNN reports native
bf16 kernels; this prints the measurement behind that rule for the machine at hand.
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import interleaved, table
from pekd.models import build_model


def make_step(model_name: str, batch: int, size: int, dtype: torch.dtype | None, channels_last: bool):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(model_name, 100, 3).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            _, logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet8x4")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    cands = {f"{'bf16' if dt else 'fp32'} {'channels_last' if cl else 'contiguous'}":
             make_step(args.model, args.batch, args.size, dt, cl)
             for dt in (None, torch.bfloat16) for cl in (False, True)}
    times = interleaved(cands, rounds=3, reps=2, warmup=1)
    print(f"{args.model}, batch {args.batch}, {args.size}px; CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}\n")
    print(table(times, "fp32 contiguous", unit_items=args.batch))


if __name__ == "__main__":
    main()
