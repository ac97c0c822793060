"""FFCV: write_dataset, the .beton checks, and a loader that matches the torch pipeline sample for sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pekd.config import DataConfig
from pekd.data.order import Plan, epoch_permutation, eval_shard, rank_micro_batches
from pekd.data.pipelines import build_eval_loader, build_train_loader
from pekd.data.sources import Source, build_source
from pekd.errors import PekdError
from pekd.write_dataset import main, write_beton
from tests.data_factory import corrupt_jpeg, make_cifar_folder, make_image_folder

pytest.importorskip("ffcv", reason="the ffcv extra is not installed (pip install 'pekd[ffcv]')")

# numba's dispatcher finaliser raises KeyError when FFCV's per-loader jitted closures are collected; harmless
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Image folder and CIFAR sources with their .betons: raw full-size, and JPEG downscaled to 64 px."""
    root = tmp_path_factory.mktemp("ffcv")
    make_image_folder(root, "train", classes=3, per_class=16)
    make_image_folder(root, "val", classes=3, per_class=5, seed=1)
    train = build_source("imagefolder", str(root), "train")
    val = build_source("imagefolder", str(root), "val")
    cifar = build_source("cifar100", str(make_cifar_folder(root / "cifar", 64, 8)), "train")
    out = {"root": root, "train": train, "val": val, "cifar": cifar,
           "train_beton": write_beton(train, root / "train.beton", workers=2),
           "small_beton": write_beton(train, root / "small.beton", max_resolution=64, write_mode="jpg",
                                      workers=2),
           "val_beton": write_beton(val, root / "val.beton", workers=2),
           "cifar_beton": write_beton(cifar, root / "cifar.beton", workers=2)}
    return out


def cfg(beton: Path, augment: str = "imagenet", size: int = 48, pipeline: str = "ffcv", **kw) -> DataConfig:
    return DataConfig(source="x", pipeline=pipeline, augment=augment, image_size=size,
                      workers=2 if pipeline == "ffcv" else 0, train_beton=str(beton), val_beton=str(beton), **kw)


def test_same_samples_and_views_as_torch(data):
    """Stored raw, FFCV's pixels are torchvision's decode; only the resize kernel differs (OpenCV INTER_AREA
    vs torchvision's antialiased bilinear). Both average the same source pixels, so they agree to ~1 grey level
    on average; a wrong box or flip would differ by tens. Boxes equal to the output size are not resized: exact.
    """
    src, plan = data["train"], Plan(12, 1, 2)
    ffcv = build_train_loader(src, cfg(data["train_beton"]), plan=plan, rank=0, seed=4, bank_views=3)
    ref = build_train_loader(src, cfg(data["train_beton"], pipeline="torch"), plan=plan, rank=0, seed=4,
                             bank_views=3)
    got, want = list(ffcv.epoch(1)), list(ref.epoch(1))
    assert len(got) == len(want) == ffcv.steps_per_epoch * plan.accum == 8
    for a, b in zip(got, want, strict=True):
        for f in ("labels", "index", "view"):
            assert torch.equal(getattr(a, f), getattr(b, f))
        assert a.images.shape == b.images.shape and a.images.dtype == torch.uint8
        diff = (a.images.float() - b.images.float()).abs()
        assert diff.mean() < 1.5 and diff.amax(dim=(1, 2, 3)).max() < 40
    resumed = list(ffcv.epoch(1, start_step=2))
    assert all(torch.equal(a.images, b.images) and torch.equal(a.index, b.index)
               for a, b in zip(got[4:], resumed, strict=True))


def test_cifar_pad_crop_is_exact_and_two_ranks_cover_the_epoch(data):
    src, plan = data["cifar"], Plan(16, 2, 1)
    seen = []
    for rank in range(2):
        ffcv = build_train_loader(src, cfg(data["cifar_beton"], "cifar", 32), plan=plan, rank=rank, seed=0)
        ref = build_train_loader(src, cfg(data["cifar_beton"], "cifar", 32, "torch"), plan=plan, rank=rank,
                                 seed=0)
        got = list(ffcv.epoch(0))
        expected = rank_micro_batches(epoch_permutation(len(src), 0, 0), plan, rank)
        assert [b.index.tolist() for b in got] == [e.tolist() for e in expected]
        assert all(torch.equal(a.images, b.images) for a, b in zip(got, ref.epoch(0), strict=True))
        seen += torch.cat([b.index for b in got]).tolist()
    assert sorted(seen) == list(range(len(src)))


def test_downscaled_jpeg_beton_crops_the_same_region(data):
    """max_resolution=64 and JPEG q90: views are drawn on the original size and scaled, so the crop shows the
    same region, blurred by the downscale (the images are 48-160 px, so up to 2.5x) and JPEG: a mean
    difference of a few grey levels, against ~40 for unrelated crops of these images."""
    src, plan = data["train"], Plan(24, 1, 1)
    got = next(build_train_loader(src, cfg(data["small_beton"]), plan=plan, rank=0, seed=1).epoch(0))
    want = next(build_train_loader(src, cfg(data["small_beton"], pipeline="torch"), plan=plan, rank=0,
                                   seed=1).epoch(0))
    assert torch.equal(got.index, want.index)
    assert (got.images.float() - want.images.float()).abs().mean() < 8


def test_eval_shards_and_center_crop(data):
    src = data["val"]
    seen = []
    for rank in range(2):
        c = cfg(data["val_beton"], size=40, eval_resize=46, eval_batch_size=4)
        got = list(build_eval_loader(src, c, rank=rank, world=2))
        c.pipeline = "torch"
        want = list(build_eval_loader(src, c, rank=rank, world=2))
        assert torch.cat([b.index for b in got]).tolist() == eval_shard(len(src), rank, 2).tolist()
        assert [len(b) for b in got] == [len(b) for b in want]  # last batch partial, nothing padded
        for a, b in zip(got, want, strict=True):
            assert (a.images.float() - b.images.float()).abs().mean() < 1.5
        seen += torch.cat([b.index for b in got]).tolist()
    assert sorted(seen) == list(range(len(src)))


def test_grayscale_source_keeps_one_channel_with_process_cache(tmp_path):
    src = build_source("digits", "", "val")
    beton = write_beton(src, tmp_path / "digits.beton", workers=1)
    plan = Plan(32, 1, 1)
    got = next(build_train_loader(src, cfg(beton, "cifar", 8, os_cache=False), plan=plan, rank=0,
                                  seed=0).epoch(0))
    want = next(build_train_loader(src, cfg(beton, "cifar", 8, "torch"), plan=plan, rank=0, seed=0).epoch(0))
    assert got.images.shape == (32, 1, 8, 8) and torch.equal(got.images, want.images)


def test_betons_are_checked(data, tmp_path):
    plan = Plan(12, 1, 1)
    with pytest.raises(PekdError, match="was written from"):
        build_train_loader(data["train"], cfg(data["val_beton"]), plan=plan, rank=0, seed=0)
    with pytest.raises(PekdError, match="does not exist"):
        build_train_loader(data["train"], cfg(tmp_path / "none.beton"), plan=plan, rank=0, seed=0)
    copied = tmp_path / "copied.beton"
    copied.write_bytes(Path(data["train_beton"]).read_bytes())
    with pytest.raises(PekdError, match="no copied.beton.json"):
        build_train_loader(data["train"], cfg(copied), plan=plan, rank=0, seed=0)
    (tmp_path / "junk.beton").write_bytes(b"not a beton" * 100)
    (tmp_path / "junk.beton.json").write_text(Path(f"{data['train_beton']}.json").read_text())
    with pytest.raises(PekdError, match="not a readable .beton"):
        build_train_loader(data["train"], cfg(tmp_path / "junk.beton"), plan=plan, rank=0, seed=0)
    with pytest.raises(PekdError, match="needs data.train_beton"):
        build_train_loader(data["train"], cfg(""), plan=plan, rank=0, seed=0)


def test_unreadable_image_names_the_file_and_writes_nothing(tmp_path, capsys):
    paths = make_image_folder(tmp_path, "train", classes=2, per_class=3)
    corrupt_jpeg(paths[4])
    out = tmp_path / "bad.beton"
    with pytest.raises(SystemExit) as e:
        main(["--source", "imagefolder", "--root", str(tmp_path), "--out", str(out), "--workers", "1"])
    assert e.value.code == 2
    assert str(paths[4]) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # no .beton, .json or temp file left


def test_cli_writes_a_beton_the_loader_accepts(tmp_path, capsys):
    make_image_folder(tmp_path, "val", classes=2, per_class=3, sizes=((600, 700), (500, 800)))
    out = tmp_path / "val.beton"
    main(["--source", "imagefolder", "--root", str(tmp_path), "--split", "val", "--out", str(out),
          "--workers", "1"])
    assert "wrote" in capsys.readouterr().out
    src: Source = build_source("imagefolder", str(tmp_path), "val")
    batches = list(build_eval_loader(src, cfg(out, size=32, eval_resize=36), rank=0, world=1))
    assert sum(len(b) for b in batches) == 6
    from ffcv.reader import Reader

    stored = Reader(str(out)).metadata["f0"]
    assert max(stored["height"].max(), stored["width"].max()) == 500  # ffcv-imagenet's default
    assert np.array_equal(Reader(str(out)).metadata["f2"], np.arange(6))
