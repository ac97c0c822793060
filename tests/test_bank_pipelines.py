"""A feature bank is exact on every pipeline: with RandomResizedCrop views of real JPEGs, a bank built and read
through torch, FFCV or DALI (CPU) trains the same steps as the online teacher on the same views; a bank whose
pixels came from another pipeline or another .beton is refused, and the test shows it would be wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pekd.config import DataConfig
from pekd.data.order import Plan
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import build_source
from pekd.errors import PekdError
from pekd.models import build_model
from pekd.teacher import bank as bank_files
from pekd.teacher.precompute import FrozenTeacher, dry_run, precompute
from pekd.train import compose_config, run
from pekd.write_dataset import write_beton
from tests.data_factory import small_imagenet
from tests.test_bank import losses
from tests.train_helpers import final_model

# numba's dispatcher finaliser raises KeyError when FFCV's per-loader jitted closures are collected; harmless
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
# every backend side by side (the data fixture writes .betons): both extras are needed
pytest.importorskip("ffcv", reason="the ffcv extra is not installed (pip install 'pekd[ffcv]')")
pytest.importorskip("nvidia.dali", reason="the DALI extra is not installed (pip install 'pekd[dali-cu13]')")

PIPELINES = ("torch", "ffcv", "dali")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 train / 12 val JPEGs of 48-160 px (some grayscale, some CMYK), their .betons, an untrained teacher."""
    root = small_imagenet(tmp_path_factory.mktemp("bank_pipelines"))
    write_beton(build_source("imagefolder", str(root), "train"), root / "small.beton", max_resolution=64,
                write_mode="jpg", workers=2)
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 3, 3).state_dict(), root / "teacher.pt")
    return root


def overrides(root: Path, pipeline: str, *extra: str) -> list[str]:
    """PEFD resnet8 -> resnet8 on 24 px RandomResizedCrops, 2 bank views, fp32 and deterministic."""
    beton = [f"data.train_beton={root / 'train.beton'}", f"data.val_beton={root / 'val.beton'}"]
    return ["data=imagenet", f"data.root={root}", "data.image_size=24", "data.eval_resize=0", "data.batch_size=16",
            "data.eval_batch_size=16", "data.workers=0", f"data.pipeline={pipeline}",
            *(beton if pipeline == "ffcv" else []), "model=resnet8", "teacher.name=resnet8",
            f"teacher.weights={root / 'teacher.pt'}", "method=pefd", "bank.views=2", "bank.dtype=float32",
            "bank.chunk=20", "trainer.progress=false", "trainer.threads=1", "trainer.deterministic=true",
            "trainer.amp=off", "trainer.log_every_steps=1", *extra]


def three_steps(root: Path, pipeline: str, run_dir: Path, *extra: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    res = run(compose_config(overrides(root, pipeline, "trainer.max_steps=3", f"run_dir={run_dir}", *extra)))
    assert res["status"] == "stopped" and res["global_step"] == 3
    return losses(run_dir), final_model(run_dir)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_bank_training_is_online_training_on_every_pipeline(root, tmp_path, pipeline):
    folder = tmp_path / "bank"
    plan = dry_run(compose_config(overrides(root, pipeline, f"teacher.bank={folder}")))
    assert "[K=2, N=48, d=64] float32: 24.0 KiB" in plan and "images/s" in plan and not folder.exists()
    manifest = precompute(compose_config(overrides(root, pipeline, f"teacher.bank={folder}")))
    assert manifest["shape"] == [2, 48, 64] and manifest["views"]["pixels"].startswith(pipeline)
    loss_b, model_b = three_steps(root, pipeline, tmp_path / "bank_run", "teacher.mode=bank",
                                  f"teacher.bank={folder}")
    loss_o, model_o = three_steps(root, pipeline, tmp_path / "online_run", "teacher.mode=online",
                                  "bank.online_same_views=true")
    np.testing.assert_allclose(loss_b, loss_o, rtol=1e-6)
    assert model_b.keys() == model_o.keys()
    for k, v in model_o.items():
        torch.testing.assert_close(model_b[k], v, rtol=1e-6, atol=1e-6)


def teacher_on(root: Path, pipeline: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first training batch of `pipeline` (bank views): the teacher's features on its pixels and the bank's
    rows for the same (view, index)."""
    src = build_source("imagefolder", str(root), "train")
    data = DataConfig(source="imagefolder", root=str(root), pipeline=pipeline, augment="imagenet", image_size=24,
                      workers=0, train_beton=str(root / "train.beton"))
    batch = next(iter(build_train_loader(src, data, plan=Plan(16, 1, 1), rank=0, seed=0, bank_views=2).epoch(0)))
    model = build_model("resnet8", 3, 3)
    model.load_state_dict(torch.load(root / "teacher.pt", weights_only=True))
    feat, _ = FrozenTeacher(model, src, torch.device("cpu"), "off", True)(batch)
    manifest = bank_files.read_json(folder / bank_files.MANIFEST)
    rows = bank_files.open_features(folder, manifest, "r")[batch.view.numpy(), batch.index.numpy()]
    return feat.numpy(), rows


def test_a_bank_of_other_pixels_is_refused_and_would_be_wrong(root, tmp_path):
    """Every backend crops the same boxes but decodes and resizes with its own kernels: a torch bank matches
    torch's pixels to float rounding and DALI's only to about a percent -- the check is needed, not pedantic."""
    torch_bank, ffcv_bank = tmp_path / "torch_bank", tmp_path / "ffcv_bank"
    precompute(compose_config(overrides(root, "torch", f"teacher.bank={torch_bank}")))
    precompute(compose_config(overrides(root, "ffcv", f"teacher.bank={ffcv_bank}")))

    feat, rows = teacher_on(root, "torch", torch_bank)
    np.testing.assert_allclose(rows, feat, rtol=1e-5, atol=1e-6)
    feat, rows = teacher_on(root, "dali", torch_bank)
    assert np.abs(rows - feat).max() > 1e-3 * np.abs(feat).max()

    cases = [("dali", torch_bank, []), ("ffcv", ffcv_bank, [f"data.train_beton={root / 'small.beton'}"])]
    for pipeline, folder, extra in cases:
        cfg = compose_config(overrides(root, pipeline, "teacher.mode=bank", f"teacher.bank={folder}",
                                       f"run_dir={tmp_path / pipeline}", *extra))
        with pytest.raises(PekdError, match=r"does not match this run: views.pixels is .* \(see data.pipeline"):
            run(cfg)
        assert not (tmp_path / pipeline).exists(), "refused before the run directory (and step 1)"
