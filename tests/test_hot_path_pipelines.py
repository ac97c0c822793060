"""The FFCV and DALI pipelines' part of the hot path: FFCV hands over its NHWC memory as channels_last images (no
layout copy per micro-batch), and DALI builds its pipeline once and resets it per pass. ~20 s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pekd.config import DataConfig
from pekd.data.order import Plan
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import build_source
from tests.data_factory import make_image_folder

# numba's dispatcher finaliser raises KeyError when FFCV's per-loader jitted closures are collected; harmless
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hot")
    make_image_folder(root, "train", classes=2, per_class=12)
    return root


def data(pipeline: str, root: Path, **kw) -> DataConfig:
    return DataConfig(source="imagefolder", root=str(root), pipeline=pipeline, augment="imagenet", image_size=32,
                      workers=2, **kw)


def test_ffcv_images_arrive_channels_last(root):
    pytest.importorskip("ffcv", reason="the ffcv extra is not installed (pip install 'pekd[ffcv]')")
    from pekd.write_dataset import write_beton

    src = build_source("imagefolder", str(root), "train")
    beton = write_beton(src, root / "train.beton", workers=2)
    loader = build_train_loader(src, data("ffcv", root, train_beton=str(beton)), plan=Plan(8, 1, 1), rank=0,
                                seed=0)
    batches = list(loader.epoch(0))
    assert len(batches) == 3
    for b in batches:
        assert b.images.shape == (8, 3, 32, 32) and b.images.is_contiguous(memory_format=torch.channels_last)
    # copied out of FFCV's reused buffers: the batches of a finished epoch are all different
    assert not torch.equal(batches[0].images, batches[1].images)


def test_dali_builds_its_pipeline_once_and_resets_it_per_pass(root):
    pytest.importorskip("nvidia.dali", reason="DALI is not installed (pip install 'pekd[dali-cu13]')")
    src = build_source("imagefolder", str(root), "train")
    plan = Plan(8, 1, 1)
    loader = build_train_loader(src, data("dali", root), plan=plan, rank=0, seed=0)
    first = [b.images for b in loader.epoch(0)]
    iterator = loader.passes.iterator
    second = [b.images for b in loader.epoch(1)]
    assert iterator is not None and loader.passes.iterator is iterator, "one pipeline for both epochs"
    short = loader.epoch(2)
    next(short)
    short.close()  # a pass cut short: what the pipeline prefetched belongs to it, so the next pass rebuilds
    assert loader.passes.iterator is None
    again = [b.images for b in loader.epoch(1)]
    fresh = build_train_loader(src, data("dali", root), plan=plan, rank=0, seed=0)
    for mine, theirs in ((first, list(fresh.epoch(0))), (second, list(fresh.epoch(1))), (again, second)):
        assert len(mine) == len(theirs) == 3
        assert all(torch.equal(a, b if isinstance(b, torch.Tensor) else b.images) for a, b in zip(mine, theirs,
                                                                                                    strict=True))
