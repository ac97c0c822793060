"""DALI: the same samples, order and views as the torch pipeline, exact eval shards, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pekd.config import DataConfig
from pekd.data.order import Plan, epoch_permutation, eval_shard, rank_micro_batches
from pekd.data.pipelines import build_eval_loader, build_train_loader
from pekd.data.sources import build_source
from pekd.errors import PekdError
from tests.data_factory import break_huffman_table, corrupt_jpeg, make_cifar_folder, make_image_folder

pytest.importorskip("nvidia.dali", reason="the DALI extra is not installed (pip install 'pekd[dali-cu13]' or "
                    "'pekd[dali-cu12]')")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dali")
    make_image_folder(root, "train", classes=3, per_class=16)
    make_image_folder(root, "val", classes=3, per_class=5, seed=1)
    make_cifar_folder(root / "cifar", 64, 8)
    return root


def cfg(augment: str = "imagenet", size: int = 48, pipeline: str = "dali", **kw) -> DataConfig:
    return DataConfig(source="x", pipeline=pipeline, augment=augment, image_size=size,
                      workers=2 if pipeline == "dali" else 0, **kw)


def pair(src, augment: str, size: int, plan: Plan, rank: int = 0, **kw):
    dali = build_train_loader(src, cfg(augment, size), plan=plan, rank=rank, seed=5, **kw)
    ref = build_train_loader(src, cfg(augment, size, "torch"), plan=plan, rank=rank, seed=5, **kw)
    return dali, ref


def test_same_samples_and_views_as_torch(root):
    """DALI's CPU decoder and torchvision are both libjpeg-turbo (fancy upsampling on, no EXIF rotation), so
    uncropped pixels agree exactly, grayscale and CMYK files included ('flip' keeps the 48 px center box).
    Resizing differs only in rounding (both are antialiased triangle filters): a mean difference well under
    one grey level and a few levels at most, where a wrong box or flip would give tens."""
    src, plan = build_source("imagefolder", str(root), "train"), Plan(12, 1, 2)
    dali, ref = pair(src, "imagenet", 48, plan, bank_views=3)
    got, want = list(dali.epoch(2)), list(ref.epoch(2))
    assert len(got) == len(want) == dali.steps_per_epoch * plan.accum == 8
    for a, b in zip(got, want, strict=True):
        for f in ("labels", "index", "view"):
            assert torch.equal(getattr(a, f), getattr(b, f)) and getattr(a, f).dtype == torch.int64
        assert a.images.dtype == torch.uint8 and a.images.shape == b.images.shape == (6, 3, 48, 48)
        diff = (a.images.float() - b.images.float()).abs()
        assert diff.mean() < 0.5 and diff.max() <= 8
    resumed = list(dali.epoch(2, start_step=3))
    assert all(torch.equal(a.images, b.images) for a, b in zip(got[6:], resumed, strict=True))

    flip, flip_ref = pair(src, "flip", 48, plan)
    assert all(torch.equal(a.images, b.images) for a, b in zip(flip.epoch(0), flip_ref.epoch(0), strict=True))


def test_arrays_two_ranks_cover_the_epoch_exactly(root):
    src, plan = build_source("cifar100", str(root / "cifar"), "train"), Plan(16, 2, 1)
    seen = []
    for rank in range(2):
        dali, ref = pair(src, "cifar", 32, plan, rank)
        got = list(dali.epoch(0))
        expected = rank_micro_batches(epoch_permutation(len(src), 5, 0), plan, rank)
        assert [b.index.tolist() for b in got] == [e.tolist() for e in expected]
        assert all(torch.equal(a.images, b.images) for a, b in zip(got, ref.epoch(0), strict=True))
        seen += torch.cat([b.index for b in got]).tolist()
    assert sorted(seen) == list(range(len(src)))


@pytest.mark.parametrize("resize", [0, 46])
def test_eval_shards_are_exact(root, resize):
    src = build_source("imagefolder", str(root), "val")
    seen = []
    for rank in range(2):
        c = cfg(size=40, eval_resize=resize, eval_batch_size=4)
        loader = build_eval_loader(src, c, rank=rank, world=2)
        got = list(loader)
        n = len(eval_shard(len(src), rank, 2))  # 7 and 8: the last batch is the remainder, nothing padded
        assert [len(b) for b in got] == [len(b) for b in loader] == [min(4, n - s) for s in range(0, n, 4)]
        c.pipeline = "torch"
        for a, b in zip(got, build_eval_loader(src, c, rank=rank, world=2), strict=True):
            assert torch.equal(a.index, b.index)
            assert (a.images.float() - b.images.float()).abs().mean() < 0.5
        assert torch.cat([b.index for b in got]).tolist() == eval_shard(len(src), rank, 2).tolist()
        seen += torch.cat([b.index for b in got]).tolist()
    assert sorted(seen) == list(range(len(src)))


@pytest.mark.parametrize("damage", [corrupt_jpeg, break_huffman_table])
def test_corrupt_files_error_or_skip(tmp_path, damage):
    """Garbage is caught from the header before DALI; a bad Huffman table only when DALI decodes it."""
    paths = make_image_folder(tmp_path, "train", classes=2, per_class=12)
    damage(paths[5])
    src = build_source("imagefolder", str(tmp_path), "train")
    plan = Plan(8, 1, 1)
    with pytest.raises(PekdError, match=rf"{paths[5].name}.*on_corrupt=skip"):
        list(build_train_loader(src, cfg(), plan=plan, rank=0, seed=0).epoch(0))
    loader = build_train_loader(src, cfg(on_corrupt="skip"), plan=plan, rank=0, seed=0)
    batches = list(loader.epoch(0))
    assert sorted(len(b) for b in batches) == [7, 8, 8]
    assert 5 not in torch.cat([b.index for b in batches]).tolist()
    assert loader.skipped == [str(paths[5])]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_mixed_without_gpu_suggests_cpu(root):
    src = build_source("imagefolder", str(root), "val")
    with pytest.raises(PekdError, match="dali_device=cpu"):
        build_eval_loader(src, cfg(dali_device="mixed"), rank=0, world=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU decoding needs CUDA: run `pytest tests/test_dali.py` "
                    "on a GPU node with pekd[dali-cu13] (bench/gpu_check.sh does not check DALI's mixed decoding)")
def test_mixed_decoding_matches_cpu_decoding(root):
    """nvJPEG on the GPU and libjpeg-turbo on the CPU decode the same boxes within a few grey levels; the batches
    (order, labels, views) are the same, and the images arrive on the GPU."""
    src, plan = build_source("imagefolder", str(root), "train"), Plan(12, 1, 2)
    mixed = build_train_loader(src, cfg(dali_device="mixed"), plan=plan, rank=0, seed=5, bank_views=3)
    cpu = build_train_loader(src, cfg(), plan=plan, rank=0, seed=5, bank_views=3)
    for a, b in zip(mixed.epoch(1), cpu.epoch(1), strict=True):
        assert a.images.is_cuda and a.images.dtype == torch.uint8 and a.images.shape == b.images.shape
        for f in ("labels", "index", "view"):
            assert torch.equal(getattr(a, f).cpu(), getattr(b, f))
        assert (a.images.cpu().float() - b.images.float()).abs().mean() < 2.0
