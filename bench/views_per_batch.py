"""`python -m bench.views_per_batch [--images 10000 --batch 64 --rounds 7]`: CIFAR-size batches per second, one worker.

Five ways to make training batches of 32 px CIFAR-like uint8 images with the pad-4 crop and the flip, each in the
calling process with one torch thread (DataLoader workers=0: the rate of one worker, which torch runs with one
thread), timed interleaved in rounds (bench/timing.py):
- per-sample views: pekd's torch pipeline as it was -- each sample's view computed by the vectorised `views()` on
  one-element arrays, then cropped, padded and flipped by torchvision, the batch stacked by the collate;
- per-batch views: the torch pipeline now (ViewDataset.__getitems__: the views of the batch at once, one gather);
- device-resident: data.pipeline=device (the images held by the device -- the CPU here, unless CUDA is there --
  and each batch one gather there; no DataLoader);
- torchvision: a plain DataLoader over the same uint8 tensors, batch size and worker count with transforms.v2
  RandomCrop(32, padding=4) and RandomHorizontalFlip per sample, default collate -- what a user of torchvision
  compares against;
- torchvision v1: the same with the older torchvision.transforms (on tensors, no v2 dispatch), the faster of the two
  here, so that the reference is not flattered by the choice of API.
Prints images/s, the ratio to the per-sample path and the ratio to the torchvision (v2) row.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from itertools import count
from types import ModuleType

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1
from torchvision.transforms import v2

from bench.timing import interleaved
from pekd.config import DataConfig
from pekd.data.order import Plan, epoch_permutation, rank_micro_batches
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import CIFAR100_MEAN, CIFAR100_STD, Source
from pekd.data.torch_pipeline import KeyBatches, ViewDataset, apply_view
from pekd.data.views import TrainRecipe


class PerSampleViews(ViewDataset):
    """The torch pipeline's dataset as it was: one key per call, its view from one-element arrays."""

    __getitems__ = None  # type: ignore[assignment]  # torch's DataLoader then fetches sample by sample

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        epoch, index = key
        image = self.load(index)
        v = self.recipe.views(epoch, np.array([index]), np.array([image.shape[1]]), np.array([image.shape[2]]))
        return apply_view(image, v.box(0), bool(v.flip[0]), self.recipe.size), int(self.source.labels[index]), \
            index, int(v.view[0])


def per_sample_collate(samples: list[tuple[torch.Tensor, int, int, int]]) -> tuple[torch.Tensor, ...]:
    """The collate as it was: stack the images, tensors of the labels, indices and views."""
    return (torch.stack([s[0] for s in samples]),
            *(torch.tensor([s[i] for s in samples], dtype=torch.int64) for i in (1, 2, 3)))


class Torchvision(Dataset):
    """What a plain torchvision recipe does: a per-sample transform of each uint8 CHW image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, api: ModuleType = v2) -> None:
        self.images, self.labels = images, labels
        self.transform = api.Compose([api.RandomCrop(32, padding=4), api.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


TORCHVISION = "torchvision RandomCrop + flip"


def endless(epoch_batches: Callable[[int], Iterator[object]]) -> Iterator[object]:
    for epoch in count():
        yield from epoch_batches(epoch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="batches per candidate per round")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (a.images, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 100, a.images).astype(np.int64)
    source = Source("cifar-like", "train", labels, 100, 3, CIFAR100_MEAN, CIFAR100_STD, arrays=arrays)
    plan = Plan(a.batch, 1, 1)
    recipe = TrainRecipe("cifar", 32, seed=0)

    sampler = KeyBatches()
    old = DataLoader(PerSampleViews(source, recipe), batch_sampler=sampler, collate_fn=per_sample_collate)

    def per_sample_epoch(epoch: int) -> Iterator[object]:
        perm = epoch_permutation(len(source), 0, epoch)
        sampler.batches = [[(epoch, int(i)) for i in b] for b in rank_micro_batches(perm, plan, 0)]
        return iter(old)

    loaders = {p: build_train_loader(source, DataConfig(source="cifar100", pipeline=p, workers=0), plan=plan,
                                     rank=0, seed=0) for p in ("torch", "device")}
    chw = torch.from_numpy(arrays).permute(0, 3, 1, 2)
    plain = {api: DataLoader(Torchvision(chw, torch.from_numpy(labels), api), batch_size=a.batch, shuffle=True,
                             drop_last=True, num_workers=0)  # the workers (none: this process) of pekd's rows
             for api in (v2, v1)}
    streams = {"per-sample views (before)": endless(per_sample_epoch),
               "per-batch views (torch pipeline)": endless(loaders["torch"].epoch),
               "device-resident (data.pipeline=device)": endless(loaders["device"].epoch),
               TORCHVISION: endless(lambda _: iter(plain[v2])),
               "torchvision v1 RandomCrop + flip": endless(lambda _: iter(plain[v1]))}

    def pull(stream: Iterator[object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(a.steps):
                next(stream)
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the device pipeline's gathers are asynchronous on a GPU
        return run

    times = interleaved({k: pull(s) for k, s in streams.items()}, rounds=a.rounds, reps=1, warmup=1)
    base, ref = times["per-sample views (before)"], times[TORCHVISION]
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "the CPU"
    print(f"\n32 px, pad-4 crop + flip, batch {a.batch}, {a.images} uint8 images, one process with one "
          f"thread (= one worker); device-resident on {where}; median of {a.rounds} rounds of "
          f"{a.steps} batches\n")
    print("| candidate | images/s | vs per-sample views | vs torchvision |\n|---|---:|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {a.steps * a.batch / t:,.0f} | {base / t:.2f}x | {ref / t:.2f}x |")


if __name__ == "__main__":
    main()
