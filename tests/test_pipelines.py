"""The torch pipeline and the dispatch: global order, resume, views applied, eval shards, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from pekd.config import DataConfig
from pekd.data.order import Plan, epoch_permutation, eval_shard, rank_micro_batches, steps_per_epoch
from pekd.data.pipelines import build_eval_loader, build_train_loader
from pekd.data.sources import build_source
from pekd.data.views import bank_view_ids
from pekd.errors import PekdError
from tests.data_factory import corrupt_jpeg, make_cifar_folder, make_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    make_image_folder(root, "train", classes=3, per_class=20)
    make_image_folder(root, "val", classes=3, per_class=7, seed=1)
    return root


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cifar_folder(tmp_path_factory.mktemp("cifar"), n_train=96, n_test=50)


def imagenet_cfg(workers: int = 0, **kw) -> DataConfig:
    return DataConfig(source="imagefolder", augment="imagenet", image_size=48, workers=workers, **kw)


def collect(loader, epoch: int, start_step: int = 0) -> list:
    return list(loader.epoch(epoch, start_step))


@pytest.mark.parametrize("world,accum,workers", [(1, 1, 2), (2, 2, 0)])
def test_every_index_once_in_the_global_order(folder, world, accum, workers):
    src = build_source("imagefolder", str(folder), "train")
    plan = Plan(12, world, accum)
    loaders = [build_train_loader(src, imagenet_cfg(workers), plan=plan, rank=r, seed=3)
               for r in range(world)]
    perm = epoch_permutation(len(src), 3, 1)
    seen = []
    for r, loader in enumerate(loaders):
        assert loader.steps_per_epoch == steps_per_epoch(len(src), 12) == 5
        batches = collect(loader, 1)
        expected = rank_micro_batches(perm, plan, r)
        assert [b.index.tolist() for b in batches] == [e.tolist() for e in expected]
        for b in batches:
            assert b.images.dtype == torch.uint8 and b.images.shape[1:] == (3, 48, 48)
            assert b.labels.dtype == b.index.dtype == b.view.dtype == torch.int64
            assert torch.equal(b.labels, torch.from_numpy(src.labels[b.index.numpy()]))
            assert not b.view.any()
            seen += b.index.tolist()
    assert sorted(seen) == sorted(perm[:5 * 12].tolist())


def test_resume_mid_epoch_and_workers_agree(folder):
    src = build_source("imagefolder", str(folder), "train")
    plan = Plan(12, 1, 2)
    inline = build_train_loader(src, imagenet_cfg(), plan=plan, rank=0, seed=0)
    workers = build_train_loader(src, imagenet_cfg(2), plan=plan, rank=0, seed=0)
    full = collect(inline, 2)
    resumed = collect(workers, 2, start_step=3)
    assert len(resumed) == 2 * (5 - 3)
    for a, b in zip(full[-len(resumed):], resumed, strict=True):
        assert torch.equal(a.index, b.index) and torch.equal(a.images, b.images)
    again = collect(workers, 2)  # persistent workers, a second pass of the same epoch
    assert all(torch.equal(a.images, b.images) for a, b in zip(full, again, strict=True))
    other = collect(inline, 3)
    assert not torch.equal(full[0].index, other[0].index)


def test_images_are_the_given_view(folder):
    src = build_source("imagefolder", str(folder), "train")
    loader = build_train_loader(src, imagenet_cfg(), plan=Plan(12, 1, 1), rank=0, seed=1)
    batch = collect(loader, 0)[0]
    for img, i in zip(batch.images, batch.index.tolist(), strict=True):
        full = torch.from_numpy(src.image(i)).permute(2, 0, 1)
        v = loader.passes.loader.dataset.recipe.views(0, np.array([i]), np.array([full.shape[1]]),
                                               np.array([full.shape[2]]))
        ref = F.resized_crop(full, *v.box(0), [48, 48], antialias=True)
        assert torch.equal(img, F.horizontal_flip(ref) if v.flip[0] else ref)


def test_bank_views_replay_the_view(folder):
    src = build_source("imagefolder", str(folder), "train")
    loader = build_train_loader(src, imagenet_cfg(), plan=Plan(60, 1, 1), rank=0, seed=2, bank_views=2)
    a, b = collect(loader, 0)[0], collect(loader, 1)[0]
    assert torch.equal(a.view, torch.from_numpy(bank_view_ids(2, 0, a.index.numpy(), 2)))
    ia, ib = a.index.argsort(), b.index.argsort()
    same = (a.view[ia] == b.view[ib]).nonzero().flatten()
    assert 0 < len(same) < 60
    assert torch.equal(a.images[ia][same], b.images[ib][same])


def test_cifar_pad_crop(cifar):
    src = build_source("cifar100", str(cifar), "train")
    cfg = DataConfig(source="cifar100", augment="cifar", image_size=32, workers=0)
    loader = build_train_loader(src, cfg, plan=Plan(32, 1, 1), rank=0, seed=0)
    batch = collect(loader, 0)[0]
    assert batch.images.shape == (32, 3, 32, 32)
    recipe = loader.passes.loader.dataset.recipe
    v = recipe.views(0, batch.index.numpy(), np.full(32, 32), np.full(32, 32))
    for k, i in enumerate(batch.index.tolist()):
        padded = np.pad(src.arrays[i], ((4, 4), (4, 4), (0, 0)))
        t, le = v.top[k] + 4, v.left[k] + 4
        ref = torch.from_numpy(padded[t:t + 32, le:le + 32]).permute(2, 0, 1)
        assert torch.equal(batch.images[k], ref.flip(-1) if v.flip[k] else ref)


@pytest.mark.parametrize("world", [1, 2])
def test_eval_shards_are_exact(folder, world):
    src = build_source("imagefolder", str(folder), "val")
    cfg = DataConfig(source="imagefolder", image_size=40, eval_resize=46, eval_batch_size=4, workers=0)
    seen = []
    for rank in range(world):
        loader = build_eval_loader(src, cfg, rank=rank, world=world)
        batches = list(loader)
        assert [len(b) for b in batches] == [len(b) for b in list(loader)]  # re-iterable
        shard = eval_shard(len(src), rank, world)
        assert torch.cat([b.index for b in batches]).tolist() == shard.tolist()
        assert all(b.images.shape[1:] == (3, 40, 40) and not b.view.any() for b in batches)
        seen += shard.tolist()
    assert sorted(seen) == list(range(len(src)))


def test_corrupt_jpeg_error_or_skip(tmp_path):
    paths = make_image_folder(tmp_path, "train", classes=2, per_class=6)
    corrupt_jpeg(paths[3])
    src = build_source("imagefolder", str(tmp_path), "train")
    plan = Plan(12, 1, 1)
    with pytest.raises(PekdError, match=rf"{paths[3].name}.*on_corrupt=skip"):
        collect(build_train_loader(src, imagenet_cfg(), plan=plan, rank=0, seed=0), 0)
    loader = build_train_loader(src, imagenet_cfg(on_corrupt="skip"), plan=plan, rank=0, seed=0)
    batches = collect(loader, 0)
    assert len(batches[0]) == 11 and 3 not in batches[0].index.tolist()
    assert loader.skipped == [str(paths[3])]


def test_bad_paths_are_user_errors(tmp_path):
    make_image_folder(tmp_path, "train", classes=2, per_class=2)
    (tmp_path / "train" / "class_empty").mkdir()
    with pytest.raises(PekdError, match="at least one image"):
        build_source("imagefolder", str(tmp_path), "train")
    with pytest.raises(PekdError, match="does not exist"):
        build_source("imagefolder", str(tmp_path / "nope"), "train")
    src = build_source("cifar100", str(make_cifar_folder(tmp_path / "c", 8, 4)), "train")
    with pytest.raises(PekdError, match="data.pipeline"):
        build_train_loader(src, DataConfig(source="cifar100", pipeline="tf.data"), plan=Plan(4, 1, 1),
                           rank=0, seed=0)
