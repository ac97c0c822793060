"""The reference pipeline: torch DataLoader workers decode and apply the given view with torchvision v2.

The batch sampler hands the Dataset (epoch, index) pairs built from `rank_micro_batches`, so workers never
keep per-epoch state: persistent workers just see new keys, and a resume is a different list of pairs. A worker
fetches a whole batch of keys at once (ViewDataset.__getitems__): views per batch, crops per batch where they can.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pekd.data.batch import Batch
from pekd.data.batch_crop import crop_arrays
from pekd.data.order import Plan, epoch_permutation, eval_shard, rank_micro_batches, steps_per_epoch
from pekd.data.sources import Source
from pekd.data.views import EvalRecipe, Recipe, Views
from pekd.errors import PekdError


def apply_view(image: torch.Tensor, box: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:
    """Crop uint8 CHW to box (zero outside the image), resize to size x size unless it is, maybe flip.

    torchvision is imported where it is used, here and in `load`: importing it pulls in torch._dynamo (about 3 s of
    each process's start on a slow CPU), and in-memory data sets cropped by pekd.data.batch_crop never need it."""
    from torchvision.transforms.v2 import functional as F

    out = F.crop(image, *box)
    if box[2] != size or box[3] != size:
        out = F.resize(out, [size, size], antialias=True)
    return F.horizontal_flip(out) if flip else out


@dataclass(frozen=True)
class Corrupt:
    """A sample whose file could not be read: returned, not raised, so a worker's traceback never hides it."""

    path: str
    reason: str


class ViewDataset(Dataset):
    """Batch-keyed dataset: a batch of (epoch, index) keys -> the Batch of those samples in their recipe's views.

    torch's DataLoader hands a whole batch of keys to `__getitems__` in one call, so the views are computed once per
    batch, vectorised (pekd.data.views), rather than once per sample on one-element arrays; in-memory images whose
    views need no resize (CIFAR's pad-crop, center crops at the stored size) are cropped by one gather
    (pekd.data.batch_crop). Either way the pixels are those `apply_view` makes of each sample's view.
    """

    def __init__(self, source: Source, recipe: Recipe):
        self.source = source
        self.recipe = recipe

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int) -> torch.Tensor:
        """Sample `index` as uint8 CHW, as the recipe's views see it: evaluation's Resize(resize) is done here,
        by torchvision itself (bilinear, antialiased, on the decoded tensor, as torchvision's ImageClassification
        preset does), and the center crop then cut from it is a plain crop."""
        image = self.read(index)
        if isinstance(self.recipe, EvalRecipe) and self.recipe.resamples(image.shape[1], image.shape[2]):
            from torchvision.transforms.v2 import functional as F

            image = F.resize(image, [self.recipe.resize], antialias=True)
        return image

    def read(self, index: int) -> torch.Tensor:
        """Sample `index` as stored or decoded, uint8 CHW."""
        if self.source.arrays is not None:
            return torch.from_numpy(self.source.arrays[index]).permute(2, 0, 1)
        assert self.source.paths is not None
        from torchvision.io import ImageReadMode, decode_image, read_file

        mode = ImageReadMode.RGB if self.source.in_chans == 3 else ImageReadMode.GRAY
        return decode_image(read_file(self.source.paths[index]), mode=mode)

    def decode(self, index: int) -> torch.Tensor | Corrupt:
        """Sample `index`, or the Corrupt record of a file that cannot be read (returned, not raised, so a worker's
        traceback never hides which file it was)."""
        try:
            return self.load(index)
        except (RuntimeError, OSError) as e:
            assert self.source.paths is not None
            return Corrupt(self.source.paths[index], str(e).splitlines()[0] if str(e) else type(e).__name__)

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[Batch, list[Corrupt]]:
        """One pass's batch (every key has the pass's epoch): the good samples as a Batch, the corrupt ones apart."""
        epoch = keys[0][0]
        assert all(k == epoch for k, _ in keys), "a batch belongs to one pass"
        index = np.array([i for _, i in keys], dtype=np.int64)
        if self.source.arrays is not None:
            return self.from_arrays(self.source.arrays, epoch, index), []
        decoded = [self.decode(i) for i in index]
        good = [not isinstance(d, Corrupt) for d in decoded]
        images = [d for d in decoded if isinstance(d, torch.Tensor)]
        bad = [d for d in decoded if isinstance(d, Corrupt)]
        if not images:
            empty = torch.zeros(0, dtype=torch.int64)
            return Batch(torch.zeros(0, 0, 0, 0, dtype=torch.uint8), empty, empty, empty), bad
        index = index[good]
        views = self.recipe.views(epoch, index, np.array([d.shape[1] for d in images]),
                                  np.array([d.shape[2] for d in images]))
        return self.batch(index, views, self.one_by_one(images, views)), bad

    def from_arrays(self, arrays: np.ndarray, epoch: int, index: np.ndarray) -> Batch:
        """In-memory images: one gather when no view needs a resize, else one view at a time."""
        n, (height, width) = len(index), arrays.shape[1:3]
        if not self.recipe.resamples(height, width):
            views = self.recipe.views(epoch, index, np.full(n, height), np.full(n, width))
            return self.batch(index, views, crop_arrays(arrays, index, views, self.recipe.size))
        images = [self.load(i) for i in index]  # evaluation's Resize changes their size: views of what is loaded
        views = self.recipe.views(epoch, index, np.full(n, images[0].shape[1]), np.full(n, images[0].shape[2]))
        return self.batch(index, views, self.one_by_one(images, views))

    def one_by_one(self, images: list[torch.Tensor], views: Views) -> torch.Tensor:
        return torch.stack([apply_view(img, views.box(j), bool(views.flip[j]), self.recipe.size)
                            for j, img in enumerate(images)])

    def batch(self, index: np.ndarray, views: Views, pixels: torch.Tensor) -> Batch:
        labels = torch.from_numpy(self.source.labels[index].astype(np.int64))
        return Batch(pixels, labels, torch.from_numpy(index), torch.from_numpy(views.view))


def collate(fetched: tuple[Batch, list[Corrupt]],
            rows: Callable[[Batch], Batch] | None = None) -> tuple[Batch, list[Corrupt]]:
    """A fetched batch with its bank rows attached when `rows` is given (in the worker, off the training thread)."""
    batch, bad = fetched
    return (batch if rows is None else rows(batch)), bad


class KeyBatches:
    """A batch sampler whose batches the owner swaps before each pass; DataLoader re-iterates it per epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class CorruptPolicy:
    """on_corrupt=error: raise one PekdError naming the file; skip: count, remember and drop it."""

    def __init__(self, on_corrupt: str):
        if on_corrupt not in ("error", "skip"):
            raise PekdError(f"data.on_corrupt={on_corrupt!r} is not one of ['error', 'skip']")
        self.on_corrupt = on_corrupt
        self.skipped: list[str] = []

    def check(self, bad: Sequence[Corrupt]) -> None:
        if bad and self.on_corrupt == "error":
            raise PekdError(f"cannot decode image {bad[0].path!r} ({bad[0].reason}); delete or replace the "
                            "file, or set data.on_corrupt=skip to skip unreadable images")
        self.skipped.extend(b.path for b in bad)


def make_loader(dataset: ViewDataset, sampler: KeyBatches, workers: int,
                rows: Callable[[Batch], Batch] | None = None) -> DataLoader:
    """pin_memory on CUDA: the loader's pin thread calls Batch.pin_memory, so the prefetch's copies to the GPU
    are asynchronous."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=partial(collate, rows=rows),
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


class TorchPasses:
    """Runs passes -- lists of index batches under one key (an epoch, or a bank's view number) -- through
    DataLoader workers; persistent workers just see new (key, index) pairs."""

    def __init__(self, source: Source, recipe: Recipe, *, workers: int, on_corrupt: str = "error",
                 rows: Callable[[Batch], Batch] | None = None):
        self.corrupt = CorruptPolicy(on_corrupt)
        self.sampler = KeyBatches()
        self.loader = make_loader(ViewDataset(source, recipe), self.sampler, workers, rows)

    def run(self, key: int, batches: Sequence[np.ndarray]) -> Iterator[Batch]:
        self.sampler.batches = [[(key, int(i)) for i in b] for b in batches]
        for batch, bad in self.loader:
            self.corrupt.check(bad)
            yield batch


class TorchTrainLoader:
    """This rank's micro-batches of an epoch, in the global order, from DataLoader workers."""

    def __init__(self, source: Source, recipe: Recipe, *, plan: Plan, rank: int, seed: int, workers: int,
                 on_corrupt: str = "error", rows: Callable[[Batch], Batch] | None = None):
        self.source, self.plan, self.rank, self.seed = source, plan, rank, seed
        self.steps_per_epoch = steps_per_epoch(len(source), plan.global_batch)
        self.passes = TorchPasses(source, recipe, workers=workers, on_corrupt=on_corrupt, rows=rows)

    @property
    def skipped(self) -> list[str]:
        """Paths of the corrupt images skipped so far (on_corrupt=skip); their batches come out smaller."""
        return self.passes.corrupt.skipped

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        perm = epoch_permutation(len(self.source), self.seed, epoch)
        return self.passes.run(epoch, rank_micro_batches(perm, self.plan, self.rank, start_step))


class TorchEvalLoader(Iterable[Batch]):
    """This rank's contiguous eval shard, center-cropped per the eval recipe, last batch kept partial."""

    def __init__(self, source: Source, recipe: Recipe, *, rank: int, world: int, batch_size: int,
                 workers: int, on_corrupt: str = "error"):
        shard = eval_shard(len(source), rank, world)
        self.batches = [shard[s:s + batch_size] for s in range(0, len(shard), batch_size)]
        self.passes = TorchPasses(source, recipe, workers=workers, on_corrupt=on_corrupt)

    def __iter__(self) -> Iterator[Batch]:
        return self.passes.run(0, self.batches)
