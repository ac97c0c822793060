"""Throughput of the torch, FFCV and DALI pipelines on the same ImageNet-like JPEGs, side by side.

`python -m bench.loaders [--images 2048 --workers 2]` writes a JPEG ImageFolder of 400-500 px photos-like
images (and an FFCV .beton of it with ffcv-imagenet's settings), then times one epoch of each pipeline with
RandomResizedCrop 224 + flip and the same worker count, after a short warm-up that absorbs JIT compilation
and pipeline start-up. Prints a Markdown table of images/s and the ratio to torch.

`--attach resnet18` also feeds each pipeline's batches to a real training step of that model (normalise,
channels_last, forward, backward, SGD) for `--attach-steps` steps, beside the same step on one fixed batch: a
pipeline whose attached rate is close to the fixed-batch rate is not what limits training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pekd.config import DataConfig
from pekd.data.order import Plan
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import Source, build_source
from pekd.models import build_model
from pekd.write_dataset import write_beton
from tests.data_factory import make_image_folder

PIPELINES = ("torch", "ffcv", "dali")
MIXED = "dali mixed"  # DALI decoding on the GPU (--dali-mixed), next to the CPU pipelines


def images_per_second(source: Source, cfg: DataConfig, batch: int, warmup: int) -> float:
    """Samples per second over one full epoch, after `warmup` batches of a previous epoch."""
    loader = build_train_loader(source, cfg, plan=Plan(batch, 1, 1), rank=0, seed=0)
    for k, _ in enumerate(loader.epoch(0)):
        if k + 1 >= warmup:
            break
    start, n = time.perf_counter(), 0
    for b in loader.epoch(1):
        n += len(b)
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # DALI mixed hands over CUDA tensors whose copies may still be in flight
    return n / (time.perf_counter() - start)


def data_config(name: str, a: argparse.Namespace, beton: Path) -> DataConfig:
    return DataConfig(source="imagefolder", pipeline="dali" if name == MIXED else name, augment="imagenet",
                      image_size=a.size, workers=a.workers, train_beton=str(beton),
                      dali_device="mixed" if name == MIXED else "cpu")


def training_step(model_name: str, source: Source) -> Callable[[torch.Tensor], None]:
    """One SGD step of `model_name` on a uint8 batch, normalised as the trainer does."""
    torch.manual_seed(0)
    model = build_model(model_name, max(source.num_classes, 2), 3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mean = torch.tensor(source.mean).view(1, -1, 1, 1)
    std = torch.tensor(source.std).view(1, -1, 1, 1)

    def step(images: torch.Tensor) -> None:
        x = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        _, logits = model(x)
        logits.logsumexp(1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def attached_rate(source: Source, cfg: DataConfig, batch: int, steps: int, model_name: str) -> float:
    """Images/s of training steps fed by the pipeline (after one warm-up step)."""
    step = training_step(model_name, source)
    loader = build_train_loader(source, cfg, plan=Plan(batch, 1, 1), rank=0, seed=0)
    it = iter(loader.epoch(0))
    step(next(it).images)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(it).images)
    return steps * batch / (time.perf_counter() - start)


def fixed_batch_rate(source: Source, batch: int, size: int, steps: int, model_name: str) -> float:
    step = training_step(model_name, source)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    step(images)
    start = time.perf_counter()
    for _ in range(steps):
        step(images)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers / FFCV and DALI threads")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=3, help="batches run before timing")
    p.add_argument("--dir", default="", help="where to write the data (default: a temporary folder)")
    p.add_argument("--attach", default="", help="also time training steps of this model fed by each pipeline")
    p.add_argument("--attach-steps", type=int, default=4)
    p.add_argument("--dali-mixed", action="store_true", help="also time DALI decoding on the GPU (needs CUDA)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.dir or tmp)
        t = time.perf_counter()
        if not (root / "train").is_dir():
            make_image_folder(root, "train", classes=8, per_class=a.images // 8,
                              sizes=((400, 500), (400, 500)), special_every=0)
        source = build_source("imagefolder", str(root), "train")
        beton = root / "train.beton"
        if not beton.is_file():
            write_beton(source, beton, max_resolution=500, write_mode="proportion", jpeg_quality=90,
                        compress_probability=0.5, workers=a.workers)
        print(f"data: {len(source)} JPEGs of 400-500 px and {beton.name} in {time.perf_counter() - t:.0f} s")
        names = [*PIPELINES, *([MIXED] if a.dali_mixed else [])]
        rates = {name: images_per_second(source, data_config(name, a, beton), a.batch, a.warmup) for name in names}
        print(f"\nRandomResizedCrop {a.size} + flip, batch {a.batch}, {a.workers} workers, uint8 CHW\n")
        print("| pipeline | images/s | vs torch |\n|---|---:|---:|")
        for name in names:
            print(f"| {name} | {rates[name]:.0f} | {rates[name] / rates['torch']:.2f}x |")
        if a.attach:
            fixed = fixed_batch_rate(source, a.batch, a.size, a.attach_steps, a.attach)
            print(f"\nWith a {a.attach} training step attached ({a.attach_steps} steps, {torch.get_num_threads()} "
                  f"threads): one fixed batch {fixed:.1f} images/s\n")
            print("| pipeline | images/s with training | share of the fixed-batch rate |\n|---|---:|---:|")
            for name in PIPELINES:
                rate = attached_rate(source, data_config(name, a, beton), a.batch, a.attach_steps, a.attach)
                print(f"| {name} | {rate:.1f} | {rate / fixed:.2f} |")


if __name__ == "__main__":
    main()
