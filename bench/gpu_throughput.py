"""Training images/s of a torchvision-shaped ImageNet student on a GPU with synthetic data, AMP and channels_last.

`python -m bench.gpu_throughput [--model resnet18 --batch 256 --amp fp16]`. Synthetic tensors already on the
device isolate the model step from the input pipeline (goal on an H200 for resnet18 at 224px: >= 13,000 images/s).
"""

from __future__ import annotations

import argparse
import time

import torch

from pekd.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--amp", default="bf16", choices=["fp16", "bf16", "off"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; this benchmark measures the GPU path")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = build_model(args.model, 1000, 3).to(dev, memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": torch.float32}[args.amp]
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp == "fp16")
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=dev)

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype, enabled=args.amp != "off"):
            _, logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    ips = args.steps * args.batch / (time.perf_counter() - t0)
    print(f"{torch.cuda.get_device_name()}: {args.model} {args.size}px batch {args.batch} amp={args.amp} "
          f"channels_last{' compiled' if args.compile else ''}: {ips:,.0f} images/s")


if __name__ == "__main__":
    main()
