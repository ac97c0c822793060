"""data.pipeline=device: the same batches as the torch pipeline -- images, labels, index and view, on every rank,
for several epochs and a resume -- from images kept in device memory (the CPU here); eval shards and a feature
bank's views too, and a bank built by either pipeline trains as the online teacher does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pekd.config import DataConfig, validate
from pekd.data.device_pipeline import resident_device
from pekd.data.order import Plan
from pekd.data.pipelines import build_eval_loader, build_train_loader, build_view_passes, pixels_identity
from pekd.data.sources import build_source
from pekd.errors import PekdError
from pekd.models import build_model
from pekd.train import compose_config, run
from tests.data_factory import make_cifar_folder, make_image_folder
from tests.test_bank import losses
from tests.train_helpers import final_model


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cifar_folder(tmp_path_factory.mktemp("cifar"), n_train=160, n_test=40)


def same_batches(torch_batches: list, device_batches: list) -> None:
    """Equal batches; the device pipeline's images and labels on the device it trains on (a GPU where there is one),
    index and view on the host."""
    assert len(torch_batches) == len(device_batches) > 0
    for x, y in zip(torch_batches, device_batches, strict=True):
        assert y.images.device == y.labels.device == resident_device() and y.images.dtype == torch.uint8
        assert y.index.device.type == y.view.device.type == "cpu"
        for field in ("images", "labels", "index", "view"):
            assert torch.equal(getattr(x, field), getattr(y, field).cpu()), field


DATA = {  # source, augment, image size: every view family the device pipeline takes
    "cifar100": ("cifar100", "cifar", 32),
    "digits flip": ("digits", "flip", 8),
    "digits none, 12 px boxes of 8 px images": ("digits", "none", 12),
}


@pytest.mark.parametrize("name", DATA)
@pytest.mark.parametrize("bank_views", [0, 3])
def test_train_batches_are_the_torch_pipelines_on_every_rank(cifar, name, bank_views):
    source_name, augment, size = DATA[name]
    src = build_source(source_name, str(cifar), "train").subset(160, split_seed=1)
    plan = Plan(32, 2, 2)  # two ranks, two accumulation steps of 8
    for rank in range(plan.world):
        loaders = [build_train_loader(src, DataConfig(source=source_name, pipeline=p, augment=augment,
                                                      image_size=size, workers=0),
                                      plan=plan, rank=rank, seed=4, bank_views=bank_views, bank_seed=9)
                   for p in ("torch", "device")]
        assert loaders[0].steps_per_epoch == loaders[1].steps_per_epoch == 5
        for epoch in range(3):
            same_batches(*(list(loader.epoch(epoch)) for loader in loaders))
        same_batches(*(list(loader.epoch(3, start_step=2)) for loader in loaders))  # a resume mid-epoch
    if bank_views:
        batch = next(iter(loaders[1].epoch(0)))
        assert batch.view.max() > 0, "bank views show up"


@pytest.mark.parametrize("world", [1, 2])
def test_eval_and_bank_replay_batches_are_the_torch_pipelines(cifar, world):
    src = build_source("cifar100", str(cifar), "val")
    cfgs = [DataConfig(source="cifar100", pipeline=p, eval_batch_size=16, workers=0) for p in ("torch", "device")]
    for rank in range(world):
        same_batches(*(list(build_eval_loader(src, c, rank=rank, world=world)) for c in cfgs))
    batches = [np.arange(0, 16), np.arange(16, 40)]
    for k in range(3):
        same_batches(*(list(build_view_passes(src, c, bank_seed=5, bank_views=3, batch_size=16).run(k, batches))
                       for c in cfgs))


def test_what_it_cannot_hold_is_refused_before_any_batch(cifar, tmp_path):
    make_image_folder(tmp_path, "train", classes=2, per_class=2)
    folder = build_source("imagefolder", str(tmp_path), "train")
    with pytest.raises(PekdError, match="reads image files; use data.pipeline=torch"):
        build_train_loader(folder, DataConfig(source="imagefolder", pipeline="device"), plan=Plan(4, 1, 1), rank=0,
                           seed=0)
    src = build_source("cifar100", str(cifar), "train")
    with pytest.raises(PekdError, match="crops without resizing"):
        build_train_loader(src, DataConfig(source="cifar100", pipeline="device", augment="imagenet"),
                           plan=Plan(4, 1, 1), rank=0, seed=0)
    with pytest.raises(PekdError, match="crops without resizing"):
        build_eval_loader(src, DataConfig(source="cifar100", pipeline="device", eval_resize=36), rank=0, world=1)
    cfg = compose_config(["data=cifar100", "data.pipeline=device", "model=resnet8", "method=ce"])
    validate(cfg)  # the name is accepted
    assert pixels_identity(cfg.data) == "torch", "the same bytes as the torch pipeline's: one bank serves both"


def overrides(root: Path, teacher: Path, pipeline: str, *extra: str) -> list[str]:
    """PEFD resnet8 -> resnet8 on CIFAR pad-crops, 2 bank views, fp32 and deterministic."""
    return ["data=cifar100", f"data.root={root}", "data.batch_size=16", "data.eval_batch_size=20", "data.workers=0",
            f"data.pipeline={pipeline}", "model=resnet8", "teacher.name=resnet8", f"teacher.weights={teacher}",
            "method=pefd", "bank.views=2", "bank.dtype=float32", "bank.chunk=64", "trainer.progress=false",
            "trainer.threads=1", "trainer.deterministic=true", "trainer.amp=off", "trainer.log_every_steps=1",
            "trainer.max_steps=3", *extra]


def test_a_bank_trains_as_the_online_teacher_with_either_pipeline_building_it(cifar, tmp_path):
    from pekd.teacher.precompute import precompute

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save(build_model("resnet8", 100, 3).state_dict(), teacher)
    banks = {p: tmp_path / f"bank-{p}" for p in ("torch", "device")}
    for p, folder in banks.items():
        precompute(compose_config(overrides(cifar, teacher, p, f"teacher.bank={folder}")))
    built = [np.fromfile(folder / "features.bin", dtype=np.float32) for folder in banks.values()]
    assert np.array_equal(*built), "the device pipeline's bank is byte for byte the torch pipeline's"

    def three_steps(name: str, *extra: str) -> tuple[list[float], dict[str, torch.Tensor]]:
        res = run(compose_config(overrides(cifar, teacher, "device", f"run_dir={tmp_path / name}", *extra)))
        assert res["status"] == "stopped" and res["global_step"] == 3
        return losses(tmp_path / name), final_model(tmp_path / name)

    online_loss, online = three_steps("online", "teacher.mode=online", "bank.online_same_views=true")
    for p, folder in banks.items():
        bank_loss, model = three_steps(f"bank-{p}-run", "teacher.mode=bank", f"teacher.bank={folder}")
        np.testing.assert_allclose(bank_loss, online_loss, rtol=1e-6)
        for k, v in online.items():
            torch.testing.assert_close(model[k], v, rtol=1e-6, atol=1e-6, msg=k)
