"""The feature bank on real digits runs: same training as online, resumable and rank-independent builds, refusals.

Most runs happen in this process (imports dominate a fresh process here); the killed build and the two ranks are
real separate processes, as a scheduler would start them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pekd.config import DataConfig
from pekd.data.order import Plan
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import build_source
from pekd.errors import PekdError
from pekd.models import build_model, read_weights
from pekd.teacher.bank import BankTeacher
from pekd.teacher.online import OnlineTeacher
from pekd.teacher.precompute import dry_run, precompute
from pekd.train import compose_config, run
from tests.train_helpers import TINY, Child, env_for, final_model, free_port, spawn, until, wait

# Two distinct pad-crop + flip views per sample, 23 chunks. CPU inference needs no deterministic mode, and leaving
# it off spares each new process the import of torch's compiler stack.
CIFAR_VIEWS = ["data.augment=cifar", "bank.views=2", "bank.dtype=float32", "bank.chunk=64",
               "trainer.deterministic=false"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A resnet8 trained for one epoch on digits (about 96% top-1): the frozen teacher of every bank here."""
    run_dir = tmp_path_factory.mktemp("teacher")
    res = run(compose_config(TINY + ["method=ce", "teacher=none", "trainer.epochs=1", "trainer.milestones=[1]",
                                     f"run_dir={run_dir}", "trainer.log_every_steps=50"]))
    assert res["status"] == "completed"
    return run_dir / "student.pt"


def with_teacher(weights: Path, *overrides: str) -> list[str]:
    return TINY + ["teacher.name=resnet8", f"teacher.weights={weights}", *overrides]


@pytest.fixture(scope="module")
def cifar_bank(teacher, tmp_path_factory) -> Path:
    """An uninterrupted 1-rank bank: the reference the killed and the 2-rank builds must equal."""
    folder = tmp_path_factory.mktemp("banks") / "cifar"
    manifest = precompute(compose_config(with_teacher(teacher, *CIFAR_VIEWS, f"teacher.bank={folder}")))
    assert manifest["shape"] == [2, 1437, 64] and manifest["teacher"]["top1"] > 80.0
    return folder


def losses(run_dir: Path) -> list[float]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def train_steps(weights: Path, run_dir: Path, *overrides: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Four PEFD steps from the same seed; per-step losses and the final student + projector weights."""
    res = run(compose_config(with_teacher(weights, "method=pefd", "bank.views=2", "trainer.max_steps=4",
                                          f"run_dir={run_dir}", *overrides)))
    assert res["status"] == "stopped" and res["global_step"] == 4
    return losses(run_dir), final_model(run_dir)


@pytest.fixture(scope="module")
def online_steps(teacher, tmp_path_factory) -> tuple[list[float], dict[str, torch.Tensor]]:
    return train_steps(teacher, tmp_path_factory.mktemp("online") / "run", "teacher.mode=online")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_bank_training_equals_online_training(teacher, online_steps, tmp_path, dtype):
    """trainer.amp=off both ways (TINY); digits' augment=none, so the online run sees the bank's views too."""
    bank = tmp_path / "bank"
    precompute(compose_config(with_teacher(teacher, "bank.views=2", f"bank.dtype={dtype}", f"teacher.bank={bank}")))
    loss_b, model_b = train_steps(teacher, tmp_path / "run", "teacher.mode=bank", f"teacher.bank={bank}",
                                  f"bank.dtype={dtype}")
    loss_o, model_o = online_steps
    if dtype == "float32":  # tolerance 1e-6; on this CPU the runs are bit for bit equal
        np.testing.assert_allclose(loss_b, loss_o, rtol=1e-6)
        for k, v in model_o.items():
            torch.testing.assert_close(model_b[k], v, rtol=1e-6, atol=1e-6)
    else:  # fp16 rounding of f_t (2^-11 relative) moves the first loss by ~1e-5; the trajectories then drift apart
        np.testing.assert_allclose(loss_b[0], loss_o[0], rtol=1e-4)
        np.testing.assert_allclose(loss_b, loss_o, rtol=5e-3)


def test_bank_rows_are_the_online_teacher_on_the_views_the_student_sees(teacher, cifar_bank):
    cfg = compose_config(with_teacher(teacher, *CIFAR_VIEWS, "teacher.mode=bank", f"teacher.bank={cifar_bank}"))
    src = build_source("digits", "", "train")
    bank = BankTeacher.open(cifar_bank, cfg, src)
    model = build_model("resnet8", 10, 1)
    model.load_state_dict(read_weights(str(teacher))[0])
    online = OnlineTeacher(model, channels_last=True)
    loader = build_train_loader(src, DataConfig(source="digits", augment="cifar", image_size=8, workers=0),
                                plan=Plan(32, 1, 1), rank=0, seed=0, bank_views=2)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (src.mean, src.std))
    for epoch in (0, 1):
        batch = next(iter(loader.epoch(epoch)))
        assert set(batch.view.tolist()) == {0, 1}
        x = ((batch.images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        f_bank, logits = bank(x, batch)
        assert logits is None and f_bank.dtype == torch.float32
        torch.testing.assert_close(f_bank, online(x, batch)[0], rtol=1e-5, atol=1e-6)


def bank_equal(a: Path, b: Path) -> None:
    assert (a / "features.bin").read_bytes() == (b / "features.bin").read_bytes()
    ma, mb = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    assert {k: v for k, v in ma.items() if k != "build"} == {k: v for k, v in mb.items() if k != "build"}


def start_precompute(overrides: list[str], world: int) -> list[Child]:
    """`world` rank processes of `python -m pekd.precompute overrides`."""
    port = free_port()
    return [spawn(["-m", "pekd.precompute", *overrides], env_for(r, world, port)) for r in range(world)]


def test_killed_precompute_resumes_without_recomputing_finished_chunks(teacher, cifar_bank, tmp_path):
    """Its building.json rewritten as the pekd before banks with logits wrote it (format 5, no "logits"): that
    build's rows are the same bytes, and the same command resumes it."""
    folder = tmp_path / "bank"
    overrides = with_teacher(teacher, *CIFAR_VIEWS, f"teacher.bank={folder}")
    [proc] = start_precompute(overrides, 1)
    until(lambda: len(list(folder.glob("chunks/*.json"))) >= 3, "3 chunks finished", procs=[proc], interval=0.01)
    proc.kill()
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunks/*.json")}
    assert proc.returncode == -9 and 3 <= len(done) < 23, proc.output()[1][-3000:]
    assert not (folder / "manifest.json").exists()
    building = json.loads((folder / "building.json").read_text())
    assert building.pop("logits") == 0 and building["format"] == 6
    (folder / "building.json").write_text(json.dumps({**building, "format": 5}))
    cfg = compose_config(overrides + ["teacher.mode=bank"])
    with pytest.raises(PekdError, match=f"incomplete .* {len(done)} chunks finished.*re-run"):
        BankTeacher.open(folder, cfg, build_source("digits", "", "train"))

    precompute(compose_config(overrides))
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("chunks/*.json") if p.name in done} == done
    assert f"resuming: {len(done)} of 23 chunks already finished, skipped" in (folder / "logs/rank0.log").read_text()
    bank_equal(folder, cifar_bank)
    assert not (folder / "building.json").exists()


def test_two_ranks_write_the_same_bank_as_one(teacher, cifar_bank, tmp_path):
    folder = tmp_path / "bank"
    procs = start_precompute(with_teacher(teacher, *CIFAR_VIEWS, f"teacher.bank={folder}"), 2)
    for rc, err in wait(procs, timeout=300):
        assert rc == 0, err[-3000:]
    bank_equal(folder, cifar_bank)
    ranks = {json.loads(p.read_text())["rank"] for p in folder.glob("chunks/*.json")}
    assert ranks == {0, 1}


def test_one_bank_serves_every_training_seed(teacher, cifar_bank, tmp_path):
    """The bank owns its views (bank.seed); the training seed only picks which view an epoch shows. A seed-1 run
    reads the seed-0-built bank and equals an online seed-1 run shown the same views."""
    common = [*CIFAR_VIEWS, "method=pefd", "trainer.max_steps=3", "seed=1"]
    run(compose_config(with_teacher(teacher, *common, "teacher.mode=bank", f"teacher.bank={cifar_bank}",
                                    f"run_dir={tmp_path / 'bank'}")))
    run(compose_config(with_teacher(teacher, *common, "teacher.mode=online", "bank.online_same_views=true",
                                    f"run_dir={tmp_path / 'online'}")))
    np.testing.assert_allclose(losses(tmp_path / "bank"), losses(tmp_path / "online"), rtol=1e-6)
    seed0 = tmp_path / "seed0"
    run(compose_config(with_teacher(teacher, *CIFAR_VIEWS, "method=pefd", "trainer.max_steps=3", "teacher.mode=bank",
                                    f"teacher.bank={cifar_bank}", f"run_dir={seed0}")))
    assert losses(seed0) != losses(tmp_path / "bank"), "the training seed still changes the trajectory"


@pytest.mark.parametrize("override,field", [
    ("teacher.name=resnet14", "teacher.name"),
    ("teacher.weights=PERTURBED", "teacher.weights_sha256"),
    ("data.subset=1000", "data.n"),
    ("data.augment=flip", "views.augment"),
    ("data.image_size=12", "views.image_size"),
    ("bank.seed=1", "views.seed"),
    ("bank.views=3", "views.K"),
    ("bank.dtype=float16", "dtype"),
])
def test_a_bank_of_another_run_is_refused_naming_the_field(teacher, cifar_bank, tmp_path, override, field):
    other = tmp_path / "weights.pt"
    if override == "teacher.name=resnet14":
        torch.save(build_model("resnet14", 10, 1).state_dict(), other)
        override += f" teacher.weights={other}"
    elif "PERTURBED" in override:
        state, _ = read_weights(str(teacher))
        state["fc.bias"] += 1e-3
        torch.save(state, other)
        override = f"teacher.weights={other}"
    cfg = compose_config(with_teacher(teacher, *CIFAR_VIEWS, "teacher.mode=bank", f"teacher.bank={cifar_bank}",
                                      *override.split(), f"run_dir={tmp_path / 'run'}"))
    with pytest.raises(PekdError, match=rf"does not match this run: {field} is .* re-run precompute"):
        run(cfg)
    assert not (tmp_path / "run").exists(), "refused before the run directory (and step 1)"


def test_damaged_or_occupied_banks_are_refused(teacher, cifar_bank, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(cifar_bank, copy)
    with open(copy / "features.bin", "r+b") as f:
        f.truncate(1000)
    cfg = compose_config(with_teacher(teacher, *CIFAR_VIEWS, "teacher.mode=bank", f"teacher.bank={copy}"))
    with pytest.raises(PekdError, match="missing or truncated"):
        BankTeacher.open(copy, cfg, build_source("digits", "", "train"))
    with pytest.raises(PekdError, match="not a feature bank"):
        BankTeacher.open(tmp_path, cfg, build_source("digits", "", "train"))
    flip = compose_config(with_teacher(teacher, *CIFAR_VIEWS, "data.augment=flip", f"teacher.bank={cifar_bank}"))
    with pytest.raises(PekdError, match="already holds a finished bank of another run .*views.augment"):
        precompute(flip)


def test_dry_run_prints_size_and_time_and_writes_nothing(teacher, tmp_path):
    text = dry_run(compose_config(with_teacher(teacher, *CIFAR_VIEWS, f"teacher.bank={tmp_path / 'b'}")))
    assert "[K=2, N=1437, d=64] float32: 718.5 KiB" in text  # 2 x 1437 x 64 x 4 bytes
    assert "images/s" in text and "expected precompute" in text
    assert not (tmp_path / "b").exists()


def kd_steps(weights: Path, run_dir: Path, *overrides: str) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Four Hinton KD steps from the same seed; per-step losses and the final student weights."""
    res = run(compose_config(with_teacher(weights, "method=kd", "bank.views=2", "trainer.max_steps=4",
                                          f"run_dir={run_dir}", *overrides)))
    assert res["status"] == "stopped" and res["global_step"] == 4
    return losses(run_dir), final_model(run_dir)


def test_kd_on_a_bank_with_logits_equals_kd_online(teacher, online_steps, tmp_path):
    """One fp32 bank with the teacher's logits (bank.logits=true) serves a PEFD run and a KD run, each the same
    as its online run on the same views (digits' augment=none)."""
    bank = tmp_path / "bank"
    manifest = precompute(compose_config(with_teacher(teacher, "bank.views=2", "bank.dtype=float32", "bank.logits=true",
                                                      f"teacher.bank={bank}")))
    assert manifest["format"] == 6 and manifest["logits"] == 10 and manifest["shape"] == [2, 1437, 64 + 10]
    loss_p, model_p = train_steps(teacher, tmp_path / "pefd", "teacher.mode=bank", f"teacher.bank={bank}",
                                  "bank.dtype=float32")
    np.testing.assert_allclose(loss_p, online_steps[0], rtol=1e-6)  # the feature is the row's first 64 columns
    for k, v in online_steps[1].items():
        torch.testing.assert_close(model_p[k], v, rtol=1e-6, atol=1e-6)
    loss_b, model_b = kd_steps(teacher, tmp_path / "kd_bank", "teacher.mode=bank", f"teacher.bank={bank}",
                               "bank.dtype=float32")
    loss_o, model_o = kd_steps(teacher, tmp_path / "kd_online", "teacher.mode=online", "bank.online_same_views=true")
    np.testing.assert_allclose(loss_b, loss_o, rtol=1e-6)
    for k, v in model_o.items():
        torch.testing.assert_close(model_b[k], v, rtol=1e-6, atol=1e-6)


def test_kd_on_a_bank_without_logits_is_refused_before_the_run_directory(teacher, cifar_bank, tmp_path):
    cfg = compose_config(with_teacher(teacher, *CIFAR_VIEWS, "method=kd", "teacher.mode=bank",
                                      f"teacher.bank={cifar_bank}", f"run_dir={tmp_path / 'run'}"))
    with pytest.raises(PekdError, match="holds no teacher logits, which Hinton KD .* bank.logits=true"):
        run(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(PekdError, match="without the teacher's logits, which this run asks for"):
        precompute(compose_config(with_teacher(teacher, *CIFAR_VIEWS, "bank.logits=true",
                                               f"teacher.bank={cifar_bank}")))
