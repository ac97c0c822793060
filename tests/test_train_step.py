"""The training step's numerics, in process: skipped samples weigh what they should, autocast covers the forward
only, and trainer.deterministic sets the CUDA switches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from pekd.data.batch import Batch
from pekd.data.order import Plan, epoch_permutation
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import Source, build_source
from pekd.engine import determinism
from pekd.engine.distributed import DistEnv
from pekd.engine.trainer import Trainer
from pekd.errors import PekdError
from pekd.methods import TrainModule, build_method
from pekd.models import build_model
from pekd.train import compose_config
from tests.data_factory import corrupt_jpeg, make_image_folder

CPU = DistEnv(0, 1, 0, torch.device("cpu"))


def make_trainer(overrides: list[str], run_dir: Path) -> tuple[Trainer, Source]:
    """A one-process trainer as pekd.train assembles it (no teacher, no evaluation), and its training source."""
    cfg = compose_config(["model=resnet8", "method=ce", "teacher=none", "trainer.progress=false",
                          "data.workers=0", f"run_dir={run_dir}", *overrides])
    train_src = build_source(cfg.data.source, cfg.data.root, "train")
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.model.name, train_src.num_classes, train_src.in_chans)
    method = build_method(cfg.method, student.feature_dim, None)
    plan = Plan.make(cfg.data.batch_size, 1, cfg.data.max_micro_batch)
    loader = build_train_loader(train_src, cfg.data, plan=plan, rank=0, seed=cfg.seed)
    trainer = Trainer(cfg, CPU, run_dir, TrainModule(student, method), None, loader, None, train_src.mean,
                      train_src.std, plan)
    return trainer, train_src


def gradients(trainer: Trainer, micro: list[Batch]) -> dict[str, torch.Tensor]:
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.train_step(micro)
    return {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}


def test_a_shortened_micro_batch_weighs_each_sample_once(tmp_path):
    """Global batch 32 in two micro-batches of 16; 4 images of the first are corrupt and skipped. The step's
    gradient must be that of one batch of the 28 good images. BatchNorm is put in eval mode (running statistics),
    so every sample's loss is a function of that sample alone: in train mode each micro-batch normalises with its
    own batch statistics, and accumulated micro-batches never equal one big batch exactly, skipped samples or not.
    The weighting is what is tested here, and it is the same in either mode."""
    root = tmp_path / "data"
    paths = make_image_folder(root, "train", classes=2, per_class=16, sizes=((16, 16), (16, 16)), special_every=0)
    for i in epoch_permutation(len(paths), 0, 0)[:4]:  # the first 4 samples of step 0: its first micro-batch
        corrupt_jpeg(paths[i])
    trainer, src = make_trainer(["data=imagenet", f"data.root={root}", "data.augment=none", "data.image_size=16",
                                 "data.batch_size=32", "data.max_micro_batch=16", "data.on_corrupt=skip",
                                 "trainer.amp=off"], tmp_path / "run")
    assert trainer.plan.accum == 2 and len(src) == 32
    it = iter(trainer.train_loader.epoch(0))
    micro = [next(it), next(it)]
    assert [len(b) for b in micro] == [12, 16] and len(trainer.train_loader.skipped) == 4
    trainer.module.eval()

    accumulated = gradients(trainer, micro)
    one_batch = gradients(trainer, [Batch(*(torch.cat([getattr(b, k) for b in micro]) for k in
                                            ("images", "labels", "index", "view")))])
    assert accumulated.keys() == one_batch.keys() and len(accumulated) > 10
    for k in accumulated:
        torch.testing.assert_close(accumulated[k], one_batch[k], rtol=1e-6, atol=1e-6, msg=k)

    # what mean / accum gives instead: the 12 samples of the shortened micro-batch weigh 16/12 as much
    trainer.optimizer.zero_grad(set_to_none=True)
    for b in micro:
        x, b = trainer.prepare(b)
        (sum(trainer.module(x, b.labels)[1].values()) / 2).backward()
    naive = {n: p.grad for n, p in trainer.module.named_parameters() if p.grad is not None}
    assert max((naive[k] - one_batch[k]).abs().max().item() for k in naive) > 1e-3


def test_bf16_step_runs_with_the_backward_outside_autocast(tmp_path):
    """PyTorch's AMP guidance: autocast the forward only; the backward runs each op in its forward's dtype."""
    trainer, _ = make_trainer(["data=digits", "data.batch_size=32", "data.max_micro_batch=16", "trainer.amp=bf16"],
                              tmp_path / "run")
    assert trainer.dtype == torch.bfloat16 and trainer.plan.accum == 2
    fc = [m for m in trainer.module.student.modules() if isinstance(m, nn.Linear)][-1]
    forward, backward = [], []
    fc.register_forward_hook(lambda m, i, o: forward.append(torch.is_autocast_enabled("cpu")))
    fc.register_full_backward_hook(lambda m, gi, go: backward.append(torch.is_autocast_enabled("cpu")))
    it = iter(trainer.train_loader.epoch(0))
    for _ in range(2):
        terms, _, n = trainer.train_step([next(it), next(it)])
        trainer.scaler.step(trainer.optimizer)
        trainer.optimizer.zero_grad(set_to_none=True)
        assert n == 32 and all(torch.isfinite(v) for v in terms.values())
    assert forward == [True] * 4, "the forward runs under bf16 autocast"
    assert backward == [False] * 4, "the backward runs outside autocast"


@pytest.mark.parametrize("deterministic", [True, False])
def test_determinism_switches(monkeypatch, deterministic):
    """On CUDA, deterministic mode needs cuBLAS's fixed workspace (set by `import pekd`, before any matmul) and
    cuDNN without autotuning; otherwise cuDNN autotunes. The flags are plain settings, so this is checked without
    a GPU. A workspace setting cuBLAS does not document as reproducible is refused for a deterministic run only."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    try:
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8", "import pekd sets it"
        determinism.configure(deterministic, torch.device("cuda"))
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        assert torch.backends.cudnn.deterministic is deterministic
        assert torch.backends.cudnn.benchmark is not deterministic
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        determinism.configure(deterministic, torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8", "the user's setting is kept"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
        if deterministic:
            with pytest.raises(PekdError, match="CUBLAS_WORKSPACE_CONFIG set to one of"):
                determinism.configure(deterministic, torch.device("cuda"))
        else:
            determinism.configure(deterministic, torch.device("cuda"))
        determinism.configure(deterministic, torch.device("cpu"))  # cuBLAS plays no part on a CPU
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]
