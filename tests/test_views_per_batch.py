"""The torch pipeline's per-batch views: a batch fetched at once (ViewDataset.__getitems__) holds, sample for sample,
the pixels, label and view that the per-sample path makes -- the recipe's views of one (seed, epoch, index) at a
time on one-element arrays, applied by apply_view -- over many indices, epochs and recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pekd.data.batch_crop import gather_crops, pad_images, reach
from pekd.data.sources import Source, build_source
from pekd.data.torch_pipeline import ViewDataset, apply_view
from pekd.data.views import EvalRecipe, Recipe, TrainRecipe
from tests.data_factory import make_image_folder


def arrays_source(n: int, side: int, chans: int, seed: int = 0) -> Source:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, side, side, chans), dtype=np.uint8)
    return Source("synthetic", "train", rng.integers(0, 10, n).astype(np.int64), 10, chans, (0.0,) * chans,
                  (1.0,) * chans, arrays=images)


def per_sample(ds: ViewDataset, epoch: int, i: int) -> tuple[torch.Tensor, int]:
    """The per-sample path: the view of one key on one-element arrays, applied to that one image."""
    image = ds.load(i)
    v = ds.recipe.views(epoch, np.array([i]), np.array([image.shape[1]]), np.array([image.shape[2]]))
    return apply_view(image, v.box(0), bool(v.flip[0]), ds.recipe.size), int(v.view[0])


def assert_batches_match(ds: ViewDataset, epochs: int, batch: int, seed: int) -> int:
    """Fetch random batches of every epoch both ways; returns how many samples were compared."""
    rng, compared = np.random.default_rng(seed), 0
    for epoch in range(epochs):
        order = rng.permutation(len(ds))
        for lo in range(0, len(order), batch):
            index = order[lo:lo + batch]
            got, bad = ds.__getitems__([(epoch, int(i)) for i in index])
            assert not bad and got.index.tolist() == index.tolist()
            assert torch.equal(got.labels, torch.from_numpy(ds.source.labels[index]))
            for j, i in enumerate(index.tolist()):
                image, view = per_sample(ds, epoch, i)
                assert torch.equal(got.images[j], image), (epoch, i)
                assert int(got.view[j]) == view
                compared += 1
    return compared


RECIPES: dict[str, tuple[Recipe, int, int]] = {  # recipe, stored side, channels
    "cifar pad-crop + flip": (TrainRecipe("cifar", 32, seed=7), 32, 3),
    "cifar, bank of 5 views": (TrainRecipe("cifar", 32, seed=7, bank_views=5, bank_seed=11), 32, 3),
    "cifar, a bank's replay of view 3": (TrainRecipe("cifar", 32, seed=0, bank_views=5, replay=True, bank_seed=11),
                                          32, 3),
    "flip, grayscale": (TrainRecipe("flip", 28, seed=1), 28, 1),
    "none, a box larger than the image": (TrainRecipe("none", 12, seed=1), 8, 1),
    "cifar crop of 24 from 32": (TrainRecipe("cifar", 24, seed=2), 32, 3),
    "imagenet (resized: per sample)": (TrainRecipe("imagenet", 24, seed=3), 32, 3),
    "eval center crop": (EvalRecipe(28), 32, 3),
    "eval resize 40 then crop 28": (EvalRecipe(28, 40), 32, 3),
}


@pytest.mark.parametrize("name", RECIPES)
def test_in_memory_batches_are_the_per_sample_views(name):
    recipe, side, chans = RECIPES[name]
    ds = ViewDataset(arrays_source(300, side, chans), recipe)
    assert assert_batches_match(ds, epochs=4, batch=64, seed=5) == 4 * 300


def test_file_batches_are_the_per_sample_views(tmp_path: Path):
    make_image_folder(tmp_path, "train", classes=2, per_class=12)
    ds = ViewDataset(build_source("imagefolder", str(tmp_path), "train"), TrainRecipe("imagenet", 40, seed=4))
    assert assert_batches_match(ds, epochs=2, batch=10, seed=6) == 2 * 24


def test_the_gather_is_apply_view_at_every_offset_and_flip():
    """Every one of CIFAR's 9 x 9 offsets with and without the flip, against apply_view, through one gather."""
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    offsets = [(t, le, f) for t in range(-4, 5) for le in range(-4, 5) for f in (False, True)]
    top, left, flip = (torch.tensor([o[k] for o in offsets]) for k in range(3))
    index = torch.arange(len(offsets)) % 3
    out = gather_crops(pad_images(images, 4), 4, index, top, left, flip.bool(), 32)
    assert out.shape == (len(offsets), 3, 32, 32) and out.is_contiguous(memory_format=torch.channels_last)
    for j, (t, le, f) in enumerate(offsets):
        ref = apply_view(images[int(index[j])].permute(2, 0, 1), (t, le, 32, 32), f, 32)
        assert torch.equal(out[j], ref), (t, le, f)


def test_reach_is_how_far_the_boxes_leave_the_image():
    v = TrainRecipe("cifar", 32, seed=0).views(0, np.arange(2000), np.full(2000, 32), np.full(2000, 32))
    assert reach(v, 32, 32) == 4
    center = EvalRecipe(12).views(0, np.arange(3), np.full(3, 8), np.full(3, 8))
    assert reach(center, 8, 8) == 2 and reach(EvalRecipe(8).views(0, np.arange(3), np.full(3, 8), np.full(3, 8)),
                                              8, 8) == 0
