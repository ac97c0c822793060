"""Throughput of the torch, FFCV and DALI pipelines on the same ImageNet-like JPEGs, side by side.

`python -m bench.loaders [--images 2048 --workers 2]` writes a JPEG ImageFolder of 400-500 px photos-like
images (and an FFCV .beton of it with ffcv-imagenet's settings), then times one epoch of each pipeline with
RandomResizedCrop 224 + flip and the same worker count, after a short warm-up that absorbs JIT compilation
and pipeline start-up. Prints a Markdown table of images/s and the ratio to torch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pekd.config import DataConfig
from pekd.data.order import Plan
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import Source, build_source
from pekd.write_dataset import write_beton
from tests.data_factory import make_image_folder

PIPELINES = ("torch", "ffcv", "dali")


def images_per_second(source: Source, cfg: DataConfig, batch: int, warmup: int) -> float:
    """Samples per second over one full epoch, after `warmup` batches of a previous epoch."""
    loader = build_train_loader(source, cfg, plan=Plan(batch, 1, 1), rank=0, seed=0)
    for k, _ in enumerate(loader.epoch(0)):
        if k + 1 >= warmup:
            break
    start, n = time.perf_counter(), 0
    for b in loader.epoch(1):
        n += len(b)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers / FFCV and DALI threads")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=3, help="batches run before timing")
    p.add_argument("--dir", default="", help="where to write the data (default: a temporary folder)")
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
        rates = {}
        for name in PIPELINES:
            cfg = DataConfig(source="imagefolder", pipeline=name, augment="imagenet", image_size=a.size,
                             workers=a.workers, train_beton=str(beton))
            rates[name] = images_per_second(source, cfg, a.batch, a.warmup)
        print(f"\nRandomResizedCrop {a.size} + flip, batch {a.batch}, {a.workers} workers, uint8 CHW on CPU\n")
        print("| pipeline | images/s | vs torch |\n|---|---:|---:|")
        for name in PIPELINES:
            print(f"| {name} | {rates[name]:.0f} | {rates[name] / rates['torch']:.2f}x |")


if __name__ == "__main__":
    main()
