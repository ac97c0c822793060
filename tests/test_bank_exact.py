"""Exact feature banks: every view of a finite augmentation stored, and training shows the very view online draws.

The distribution tests draw views as the pipelines do (pekd.data.views) for many (seed, epoch, index) keys; the
training tests run real precomputes and real PEFD runs on sklearn's digits (8 x 8, so CIFAR's pad-4 crop + flip has
the same 9 x 9 x 2 = 162 views as on CIFAR's 32 x 32) over a 64-image subset, with an untrained resnet8 teacher:
the bytes compared do not need a good teacher, only a fixed one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from pekd.config import as_current
from pekd.data.sources import run_sources
from pekd.data.views import TrainRecipe
from pekd.engine.rundir import config_differences
from pekd.errors import PekdError
from pekd.models import build_model
from pekd.teacher import allocation
from pekd.teacher.bank import BankTeacher
from pekd.teacher.bank_views import config_note
from pekd.teacher.precompute import precompute
from pekd.train import compose_config, run
from tests.test_bank import losses
from tests.train_helpers import TINY, final_model

N_IMAGES = 5000
EPOCHS = 8


def draws(recipe: TrainRecipe, seeds: range) -> np.ndarray:
    """[seeds x epochs, N_IMAGES, 4] of (row offset, column offset, flip, view number) of 32 x 32 images."""
    index, side = np.arange(N_IMAGES), np.full(N_IMAGES, 32)
    out = []
    for seed in seeds:
        r = TrainRecipe(recipe.augment, recipe.size, seed, recipe.bank_views, bank_seed=7, exact=recipe.exact)
        for epoch in range(EPOCHS):
            v = r.views(epoch, index, side, side)
            out.append(np.stack([v.top + 4, v.left + 4, v.flip.astype(np.int64), v.view], axis=1))
    return np.stack(out)


ONLINE = TrainRecipe("cifar", 32, 0)
EXACT = TrainRecipe("cifar", 32, 0, bank_views=162, exact=True)


def test_exact_views_are_the_online_draws_and_replay_to_the_same_boxes():
    """Strongest form: for every (seed, epoch, index) the exact bank shows the online pipeline's very crop and flip,
    and its view number replays (precompute) to that same box."""
    online, exact = draws(ONLINE, range(2)), draws(EXACT, range(2))
    np.testing.assert_array_equal(exact[..., :3], online[..., :3])
    k = exact[..., 3].ravel()
    assert k.min() == 0 and k.max() == 161
    replay = TrainRecipe("cifar", 32, 0, 162, replay=True, exact=True)
    index = np.tile(np.arange(N_IMAGES), len(exact))
    for view in (0, 1, 17, 80, 161):
        sel = k == view
        v = replay.views(view, index[sel], np.full(sel.sum(), 32), np.full(sel.sum(), 32))
        drawn = exact.reshape(-1, 4)[sel]
        np.testing.assert_array_equal(np.stack([v.top + 4, v.left + 4, v.flip], 1), drawn[:, :3])


def test_exact_view_distribution_is_the_online_one_chi_square():
    """RandomCrop(32, padding=4) + flip: offsets uniform on 0..8 each, flip 1/2, independent of one another and of
    the epoch before. Chi-square over the 162 cells and over consecutive epochs of one image; a bank of 4 drawn views
    (each image cycling through 4 fixed crops) fails the second, so the test can fail."""
    d = draws(EXACT, range(4))  # 4 seeds x 8 epochs x 5,000 images = 160,000 draws
    cells = np.bincount(d[..., 3].ravel(), minlength=162)
    joint = stats.chisquare(cells)
    flips = stats.chisquare(np.bincount(d[..., 2].ravel(), minlength=2))
    rows = stats.chisquare(np.bincount(d[..., 0].ravel(), minlength=9))

    def epoch_to_epoch(x: np.ndarray) -> float:
        """p of independence between an image's row offset in epoch e and in epoch e + 1 (same seed)."""
        x = x.reshape(-1, EPOCHS, N_IMAGES, 4)[..., 0]
        table = np.zeros((9, 9))
        np.add.at(table, (x[:, :-1].ravel(), x[:, 1:].ravel()), 1)
        return float(stats.chi2_contingency(table).pvalue)

    p = {"162 cells": joint.pvalue, "flips": flips.pvalue, "row offsets": rows.pvalue, "epoch to epoch":
         epoch_to_epoch(d)}
    print("chi-square p:", {key: round(float(v), 4) for key, v in p.items()})
    assert min(p.values()) > 0.01, p
    fixed = draws(TrainRecipe("cifar", 32, 0, bank_views=4), range(4))
    assert epoch_to_epoch(fixed) < 1e-12
    flip_only = draws(TrainRecipe("flip", 32, 0, bank_views=2, exact=True), range(1))
    np.testing.assert_array_equal(flip_only[..., 2], draws(TrainRecipe("flip", 32, 0), range(1))[..., 2])


def test_notes_say_which_banks_are_not_the_online_recipe():
    def note(**c: object) -> str | None:
        return config_note({"teacher.mode": "bank", "bank.online_same_views": False, **c})

    assert note(**{"data.augment": "cifar", "bank.views": None}) is None
    assert note(**{"data.augment": "flip", "bank.views": 2}) is None  # both flips, equally often
    assert note(**{"data.augment": "imagenet", "bank.views": None}) == \
        "bank: 1 fixed view per image, not the online recipe"
    assert note(**{"data.augment": "cifar", "bank.views": 4}).startswith(
        "bank: 4 fixed views per image, not the online recipe (leave bank.views unset")
    assert config_note({"teacher.mode": "online", "data.augment": "imagenet", "bank.views": 4}) is None


def test_configs_written_before_exact_banks_resume():
    """Their config.yaml holds bank.views: 1, the old default: for a run that reads no bank it is the new null, for
    a bank run it is a different recipe now (every view), and resuming it with the same command is refused."""
    old = {"teacher": {"mode": "online"}, "bank": {"views": 1, "online_same_views": False}}
    new = {"teacher": {"mode": "online"}, "bank": {"views": None, "online_same_views": False}}
    assert config_differences(old, new) == []
    bank_old, bank_new = ({**c, "teacher": {"mode": "bank"}} for c in (old, new))
    assert config_differences(bank_old, bank_new) == ["bank.views"]
    assert as_current({"teacher.mode": "bank", "bank.views": 1})["bank.views"] == 1


def test_a_bank_its_disk_cannot_hold_is_refused_before_any_write(tmp_path):
    """CIFAR-100 x 162 views x 256 fp16 = 4.1 GB; ten thousand times that fits no disk here."""
    spec = {"shape": [162, 50_000 * 10_000, 256], "dtype": "float16", "views": {"exact": True}}
    assert "162 views (every view) x 500000000 images x 256 float16 = 41.5 TB" in allocation.size_line(tmp_path, spec)
    with pytest.raises(PekdError, match=r"needs 37.7 TiB .* free .* or choose a teacher.bank on a filesystem with "):
        allocation.check_room(tmp_path / "bank", spec)
    assert not (tmp_path / "bank").exists()


# --- real builds and runs ---------------------------------------------------------------------------------------

SMALL = ["data.augment=cifar", "data.subset=64", "bank.dtype=float32", "bank.chunk=32"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10, 1).state_dict(), path)
    return path


def with_teacher(weights: Path, *overrides: str) -> list[str]:
    return TINY + ["teacher.name=resnet8", f"teacher.weights={weights}", *SMALL, *overrides]


@pytest.fixture(scope="module")
def exact_bank(weights, tmp_path_factory) -> Path:
    """Every one of the 162 views of the 64 images: 10,368 teacher rows."""
    folder = tmp_path_factory.mktemp("banks") / "exact"
    manifest = precompute(compose_config(with_teacher(weights, f"teacher.bank={folder}")))
    assert manifest["shape"] == [162, 64, 64] and manifest["views"]["exact"] is True and manifest["format"] == 6
    return folder


def test_precompute_says_size_views_and_time_before_building(exact_bank):
    log = (exact_bank / "logs/rank0.log").read_text()
    size = log.index("162 views (every view) x 64 images x 64 float32 = 2.7 MB, 2.5 MiB (2654208 bytes)")
    assert log.index("views: 162 per image; bank: every view of each image (162 = 9 x 9 crop offsets x 2 flips)") \
        > size
    assert log.index("expected precompute: 162 x 64 + 360 eval images at ") < log.index("computing 2 chunks")


def steps(weights: Path, run_dir: Path, *overrides: str) -> tuple[list[float], dict[str, torch.Tensor], str]:
    """Four PEFD steps (two epochs of 64 images): per-step losses, final student + projector weights, start line."""
    res = run(compose_config(with_teacher(weights, "method=pefd", "trainer.max_steps=4", f"run_dir={run_dir}",
                                          *overrides)))
    assert res["status"] == "stopped" and res["global_step"] == 4
    start = next(line for line in (run_dir / "logs/rank0.log").read_text().splitlines() if "INFO run " in line)
    return losses(run_dir), final_model(run_dir), start


def test_an_exact_bank_run_is_an_ordinary_online_run_bit_for_bit(weights, exact_bank, tmp_path):
    """No bank.online_same_views: the online run draws fresh crops every epoch, as the paper's recipe does, and the
    bank run shows the same crops and reads the teacher's features of them. fp32 bank, amp off, deterministic."""
    loss_o, model_o, line_o = steps(weights, tmp_path / "online", "teacher.mode=online")
    loss_b, model_b, line_b = steps(weights, tmp_path / "bank", "teacher.mode=bank", f"teacher.bank={exact_bank}")
    assert loss_b == loss_o
    assert model_b.keys() == model_o.keys() and all(torch.equal(model_b[k], v) for k, v in model_o.items())
    assert "bank:" not in line_o
    assert line_b.endswith("; bank: every view of each image (162 = 9 x 9 crop offsets x 2 flips), drawn as online: "
                           "the online recipe")


def test_fixed_views_say_so_and_old_banks_are_refused_naming_the_rebuild(weights, exact_bank, tmp_path):
    """bank.views=2 on CIFAR's augmentation: two fixed crops per image, and the start line says it is not the
    online recipe. A bank of an older pekd (format 4, drawn views) serves such runs, and a run asking for every
    view is refused, naming bank.views and the rebuild."""
    folder = tmp_path / "drawn"
    precompute(compose_config(with_teacher(weights, "bank.views=2", f"teacher.bank={folder}")))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["views"]["exact"] is False and manifest["shape"] == [2, 64, 64]
    del manifest["views"]["exact"]
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 4}))
    *_, line = steps(weights, tmp_path / "run", "teacher.mode=bank", f"teacher.bank={folder}", "bank.views=2")
    assert line.endswith("; bank: 2 fixed views per image, not the online recipe (leave bank.views unset for every "
                         "view, the online recipe)")
    cfg = compose_config(with_teacher(weights, "teacher.mode=bank", f"teacher.bank={folder}"))
    with pytest.raises(PekdError, match=r"does not match this run: views.exact is False in the bank but True for "
                                        r"this run \(see bank.views: unset = every view .*re-run precompute"):
        BankTeacher.open(folder, cfg, run_sources(cfg)[0])


def test_bank_views_must_be_positive_or_unset(weights):
    with pytest.raises(PekdError, match=r"bank.views=0 must be positive, or null"):
        run(compose_config(with_teacher(weights, "bank.views=0")))
