"""data.pipeline=device: the whole data set in device memory, each batch cropped and flipped there.

Small models are launch-bound: a CIFAR student's step is a few hundred short kernels, and a GPU runs it faster than
DataLoader workers make batches and the host pins and copies them. Data sets that fit in device memory
(CIFAR-100's train split is 150 MB of uint8, Fashion-MNIST 47 MB, sklearn's digits 0.1 MB) need neither: their uint8
images are uploaded once, zero-padded by as far as the views reach, and a micro-batch is one gather on the device
(pekd.data.batch_crop) -- no worker processes, no decode, no per-step image copy (airbench's recipe).

The order and the views are those of every pipeline (pekd.data.order, pekd.data.views), computed on the host once per
pass -- for the whole pass at once, vectorised -- and uploaded as one small int64 tensor that the batches slice.
Only views that need no resize are supported (augment cifar, flip or none; evaluation without a resize), and those
make each pixel a byte copy: the batches are identical to the torch pipeline's on any device, so a bank built with
either serves both. Normalisation runs on the device as for every pipeline (the trainer's Inputs), so batches are
uint8 like the others'. Labels live on the device with the images; index and view stay on the host, where the
sample audit and a feature bank's rows (gathered here, on the training thread, there being no workers) read them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from pekd.data.batch import Batch
from pekd.data.batch_crop import gather_crops, pad_images, reach
from pekd.data.order import Plan, epoch_permutation, eval_shard, rank_micro_batches, steps_per_epoch
from pekd.data.sources import Source
from pekd.data.views import Recipe
from pekd.errors import PekdError

MEMORY_SHARE = 0.5  # at most this share of the device's free memory goes to the images


def resident_device() -> torch.device:
    """Where this process trains: its current CUDA device (pekd.engine.distributed sets it per rank), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def upload(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`; on CUDA through pinned memory, so that the copy does not wait for the device."""
    t = torch.from_numpy(host)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


class DeviceImages:
    """A source's uint8 NHWC images and labels on the device, the images zero-padded by `pad` pixels."""

    def __init__(self, source: Source, device: torch.device) -> None:
        if source.arrays is None:
            raise PekdError(f"data.pipeline=device keeps the images in device memory, but data.source={source.name} "
                            "reads image files; use data.pipeline=torch (or ffcv, dali) for image folders")
        self.arrays, self.device, self.name = source.arrays, device, source.name
        self.labels = upload(source.labels.astype(np.int64), device)
        self.pad = -1
        self.padded = torch.empty(0, dtype=torch.uint8)

    def fit(self, pad: int) -> None:
        """Pad the images by at least `pad` (an upload when the views reach further than ever before: once)."""
        if pad <= self.pad:
            return
        n, h, w, c = self.arrays.shape
        need = n * (h + 2 * pad) * (w + 2 * pad) * c
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
            if need > MEMORY_SHARE * free:
                raise PekdError(f"data.pipeline=device needs {need / 2**20:.0f} MiB of device memory for the "
                                f"{self.name} images and {free / 2**20:.0f} MiB are free; use data.pipeline=torch")
        self.padded = torch.empty(0, dtype=torch.uint8)  # free the old copy before making the new one
        self.padded = pad_images(upload(self.arrays, self.device), pad)
        self.pad = pad


class DevicePasses:
    """Runs passes -- lists of index batches under one key (an epoch, or a bank's view number) -- from device memory."""

    def __init__(self, source: Source, recipe: Recipe, device: torch.device,
                 rows: Callable[[Batch], Batch] | None = None) -> None:
        self.images = DeviceImages(source, device)
        self.height, self.width = self.images.arrays.shape[1:3]
        if recipe.resamples(self.height, self.width):
            raise PekdError(f"data.pipeline=device crops without resizing, and these views resize {self.height} x "
                            f"{self.width} images to {recipe.size} x {recipe.size} (data.augment=imagenet or "
                            "data.eval_resize); use data.augment=cifar|flip|none and data.eval_resize=0, or "
                            "data.pipeline=torch")
        self.recipe, self.rows = recipe, rows

    def run(self, key: int, batches: Sequence[np.ndarray]) -> Iterator[Batch]:
        index = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches]) if batches else np.zeros(0, np.int64)
        views = self.recipe.views(key, index, np.full(len(index), self.height), np.full(len(index), self.width))
        self.images.fit(reach(views, self.height, self.width))
        keys = upload(np.stack([index, views.top, views.left, views.flip.astype(np.int64)]), self.images.device)
        flips = keys[3].bool()
        start = 0
        for b in batches:
            part = slice(start, start + len(b))
            start += len(b)
            images = gather_crops(self.images.padded, self.images.pad, keys[0, part], keys[1, part], keys[2, part],
                                  flips[part], self.recipe.size)
            batch = Batch(images, self.images.labels[keys[0, part]], torch.from_numpy(index[part]),
                          torch.from_numpy(views.view[part]))
            yield batch if self.rows is None else self.rows(batch)


class DeviceTrainLoader:
    """This rank's micro-batches of an epoch, in the global order, cut from the images in device memory."""

    def __init__(self, source: Source, recipe: Recipe, *, plan: Plan, rank: int, seed: int,
                 rows: Callable[[Batch], Batch] | None = None) -> None:
        self.n, self.plan, self.rank, self.seed = len(source), plan, rank, seed
        self.steps_per_epoch = steps_per_epoch(len(source), plan.global_batch)
        self.passes = DevicePasses(source, recipe, resident_device(), rows)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        perm = epoch_permutation(self.n, self.seed, epoch)
        return self.passes.run(epoch, rank_micro_batches(perm, self.plan, self.rank, start_step))


class DeviceEvalLoader(Iterable[Batch]):
    """This rank's contiguous eval shard from device memory, center-cropped per the eval recipe, last batch partial."""

    def __init__(self, source: Source, recipe: Recipe, *, rank: int, world: int, batch_size: int) -> None:
        shard = eval_shard(len(source), rank, world)
        self.batches = [shard[s:s + batch_size] for s in range(0, len(shard), batch_size)]
        self.passes = DevicePasses(source, recipe, resident_device())

    def __iter__(self) -> Iterator[Batch]:
        return self.passes.run(0, self.batches)
