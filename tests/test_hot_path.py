"""The GPU hot path's fixes, shown where a CPU can show them: pinned batches out of the DataLoader's pin path, the
AMP choice per GPU generation, the EMA equal to torch's AveragedModel, loss-scaler state across AMP settings, the
cuBLAS workspace set at import, the SyncBatchNorm lock-step plan and the one-read finiteness check.
docs/gpu_hot_path.md says which of these only a GPU can finish checking (bench/gpu_check.sh)."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data._utils.pin_memory import pin_memory

from pekd.data.batch import Batch
from pekd.engine.checks import weights_finite
from pekd.engine.ema import StudentEMA
from pekd.engine.precision import amp_dtype, choose_amp, load_scaler_state
from pekd.engine.step import micro_plan
from pekd.errors import PekdError
from pekd.models import build_model
from pekd.teacher.bank import BankRows
from tests.train_helpers import REPO, TINY


def a_batch(n: int = 4) -> Batch:
    return Batch(torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8), torch.arange(n), torch.arange(n) + 10,
                 torch.zeros(n, dtype=torch.int64), torch.randn(n, 16).half())


def test_the_dataloaders_pin_path_reaches_every_field_of_a_batch():
    """torch's DataLoader (pin_memory=True) pins what its collate returns through pin_memory(), which calls a
    custom type's own pin_memory(); without one a Batch came back unpinned. Pinning needs an accelerator: with
    one, every field comes back pinned and equal; without one, the pin path must fail exactly as pinning a
    tensor does, which shows that it reached the tensors (before Batch.pin_memory it returned the batch)."""
    batch = a_batch()
    assert len(batch._tensors()) == len(dataclasses.fields(Batch)), "every field is pinned and moved"
    moved = batch.to(torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(moved._tensors(), batch._tensors(), strict=True))
    if torch.cuda.is_available():
        pinned = pin_memory(batch)
        assert isinstance(pinned, Batch) and all(t.is_pinned() for t in pinned._tensors())
        assert all(torch.equal(a, b) for a, b in zip(pinned._tensors(), batch._tensors(), strict=True))
        return
    with pytest.raises(RuntimeError) as tensor_error:
        torch.zeros(1).pin_memory()
    with pytest.raises(RuntimeError) as batch_error:
        pin_memory(batch)
    assert str(batch_error.value) == str(tensor_error.value)


@pytest.mark.parametrize(("capability", "expected"), [
    ((6, 0), torch.float16), ((7, 0), torch.float16), ((7, 5), torch.float16),  # Pascal, Volta, Turing
    ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16), ((8, 9), torch.bfloat16),  # Ampere, Ada
    ((9, 0), torch.bfloat16), ((10, 0), torch.bfloat16), ((12, 0), torch.bfloat16),  # Hopper (H100/H200), Blackwell
])
def test_auto_is_bf16_from_ampere_on_and_fp16_before(capability, expected):
    assert choose_amp("auto", "cuda", capability, cpu_bf16=False) is expected
    assert choose_amp("off", "cuda", capability, cpu_bf16=False) is None
    assert choose_amp("fp16", "cuda", capability, cpu_bf16=False) is torch.float16  # asked for: given
    assert choose_amp("bf16", "cuda", capability, cpu_bf16=False) is torch.bfloat16


def test_auto_on_a_cpu_is_bf16_only_with_native_kernels():
    assert choose_amp("auto", "cpu", None, cpu_bf16=True) is torch.bfloat16
    assert choose_amp("auto", "cpu", None, cpu_bf16=False) is None
    assert choose_amp("bf16", "cpu", None, cpu_bf16=False) is torch.bfloat16
    with pytest.raises(PekdError, match="trainer.amp=fp16 needs CUDA"):
        choose_amp("fp16", "cpu", None, cpu_bf16=True)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert amp_dtype("auto", torch.device("cpu")) is (torch.bfloat16 if native else None)  # this machine


def bn_steps(model: nn.Module, steps: int, seed: int = 0):
    """SGD steps on random data in train mode (BatchNorm's buffers move), yielding after each."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        nn.functional.cross_entropy(model(x)[1], y).backward()
        opt.step()
        opt.zero_grad()
        yield


def test_ema_equals_torchs_averaged_model_and_copies_counts():
    """Float parameters and buffers equal AveragedModel(get_ema_multi_avg_fn(decay), use_buffers=True)'s bit for
    bit (tolerance 0: the same foreach lerp by the same Python float); num_batches_tracked is the student's count,
    not a truncated average of counts; the step count stays a host value."""
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    ema = StudentEMA(model, 0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    pairs = ema.pairs
    for _ in bn_steps(model, 7):
        ema.update(model)
        reference.update_parameters(model)
    assert ema.pairs is pairs, "the tensor lists are built once, not every update"
    mine, theirs = ema.model.state_dict(), reference.module.state_dict()
    floats = [k for k, v in mine.items() if v.is_floating_point()]
    counts = [k for k in mine if k.endswith("num_batches_tracked")]
    assert len(floats) > 20 and len(counts) > 5
    for k in floats:
        assert torch.equal(mine[k], theirs[k]), k
    student = model.state_dict()
    for k in counts:
        assert int(mine[k]) == int(student[k]) == 7, k
    assert ema.updates == 7 and ema.averaged.n_averaged.device.type == "cpu" and int(ema.averaged.n_averaged) == 7


def test_ema_resumes_exactly():
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    ema = StudentEMA(model, 0.95)
    steps = bn_steps(model, 6)
    for _ in range(3):
        next(steps)
        ema.update(model)
    resumed = StudentEMA(build_model("resnet8", 10, 3), 0.95)
    resumed.load_state_dict(pickle.loads(pickle.dumps(ema.state_dict())))
    assert resumed.updates == 3
    for _ in steps:
        ema.update(model)
        resumed.update(model)
    a, b = ema.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_loss_scaler_state_across_amp_settings(caplog):
    """A disabled scaler's (empty) state into fp16's enabled one: torch refuses it; pekd starts a fresh scale and
    says so. An fp16 scaler's state into a run that needs none: dropped, saying so. fp16 to fp16: loaded."""
    caplog.set_level(logging.INFO, logger="pekd")
    fp16_state = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                  "_growth_tracker": 7}
    enabled = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError):
        enabled.load_state_dict({})
    load_scaler_state(enabled, {}, "bf16", "fp16")
    assert enabled.get_scale() == 65536.0
    assert "written with trainer.amp bf16 (no loss scaler)" in caplog.text and "fresh GradScaler" in caplog.text

    caplog.clear()
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    load_scaler_state(disabled, fp16_state, "fp16", "bf16")
    assert "GradScaler state (scale 1024) is dropped: this run trains in bf16" in caplog.text

    caplog.clear()
    load_scaler_state(enabled, fp16_state, "fp16", "fp16")
    assert enabled.get_scale() == 1024.0 and caplog.text == ""
    load_scaler_state(disabled, {}, None, "off")  # a checkpoint of an older pekd, no scaler either side: silent
    assert caplog.text == ""


def test_cublas_workspace_is_set_by_importing_pekd_before_any_run():
    """Set at `import pekd`, so a deterministic run after anything else in the process finds it in force; a user's
    own value is kept."""
    code = "import os, pekd.train; print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))"
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == ":4096:8", out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "CUBLAS_WORKSPACE_CONFIG": ":16:8"},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == ":16:8", out.stderr[-2000:]


def test_deterministic_run_after_another_in_one_process_and_checkpoints_name_their_amp(tmp_path):
    """Two short runs in this process, the second deterministic (on CUDA it would fail at its first matmul if
    the workspace were set only when it started); the checkpoint records the AMP dtype. ~15 s."""
    from pekd.engine import checkpoint as ckpt
    from pekd.train import compose_config, run

    for i, deterministic in enumerate((False, True)):
        res = run(compose_config(TINY + ["method=ce", "teacher=none", "trainer.max_steps=2", "trainer.amp=off",
                                         f"trainer.deterministic={str(deterministic).lower()}",
                                         f"run_dir={tmp_path / str(i)}"]))
        assert res["status"] == "stopped" and res["global_step"] == 2
        [newest] = ckpt.list_checkpoints(tmp_path / str(i) / "checkpoints")
        assert ckpt.load(newest)["amp"] == "off"
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(("sizes", "lockstep", "run", "last"), [
    ([16, 16, 16], False, [0, 1, 2], 2),
    ([16, 0, 16], False, [0, 2], 2),
    ([16, 16, 0], False, [0, 1], 1),  # without SyncBatchNorm an empty micro-batch is skipped, even the last
    ([16, 0, 16], True, [0, 1, 2], 2),  # with it every rank runs every micro-batch: the same collectives
    ([16, 16, 0], True, [0, 1, 2], 2),  # and the last one syncs on every rank, empty or not
])
def test_micro_plan(sizes, lockstep, run, last):
    assert micro_plan(sizes, lockstep) == (run, last)


def test_an_empty_lockstep_micro_batch_adds_exact_zeros(tmp_path):
    """What a rank runs for a micro-batch data.on_corrupt=skip emptied under SyncBatchNorm: a zero-sample forward
    and backward (SyncBatchNorm refuses CPU tensors; plain BatchNorm stands in). Its gradients are exact zeros
    and its losses add nothing: the step equals the step without it, and every loss term is finite."""
    from pekd.data.order import Plan
    from pekd.engine.distributed import DistEnv
    from pekd.engine.trainer import Trainer
    from pekd.methods import TrainModule, build_method
    from pekd.train import compose_config

    cfg = compose_config(TINY + ["method=ce", "teacher=none", "trainer.amp=off", f"run_dir={tmp_path}"])
    torch.manual_seed(0)
    student = build_model("resnet8", 10, 1)
    trainer = Trainer(cfg, DistEnv(0, 1, 0, torch.device("cpu")), tmp_path,
                      TrainModule(student, build_method(cfg.method, student.feature_dim, None)), None, None, None,
                      (0.5,), (0.25,), Plan(8, 1, 1))
    trainer.module.eval()  # batch statistics aside (an empty batch has none), only the weighting is compared
    full = Batch(torch.randint(0, 255, (8, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (8,)),
                 torch.arange(8), torch.zeros(8, dtype=torch.int64))
    empty = Batch(torch.zeros(0, 0, 0, 0, dtype=torch.uint8), *(torch.zeros(0, dtype=torch.int64),) * 3)

    def grads(micro: list[Batch], lockstep: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.step.lockstep = lockstep
        terms, _, n = trainer.step(micro, 0)
        assert n == 8
        return {k: p.grad.clone() for k, p in trainer.module.named_parameters() if p.grad is not None}, terms

    alone, terms_alone = grads([full], False)
    with_empty, terms = grads([full, empty], True)
    assert alone.keys() == with_empty.keys() and len(alone) > 10
    assert all(torch.equal(alone[k], with_empty[k]) for k in alone)
    assert all(torch.isfinite(v).all() and torch.equal(v, terms_alone[k]) for k, v in terms.items())


def test_sync_bn_on_cpu_is_one_clear_error(tmp_path):
    from pekd.data.order import Plan
    from pekd.engine.distributed import DistEnv
    from pekd.engine.trainer import Trainer
    from pekd.methods import TrainModule, build_method
    from pekd.train import compose_config

    cfg = compose_config(TINY + ["method=ce", "teacher=none", "trainer.sync_bn=true", f"run_dir={tmp_path}"])
    student = build_model("resnet8", 10, 1)
    with pytest.raises(PekdError, match="trainer.sync_bn=true needs CUDA: torch's SyncBatchNorm refuses cpu"):
        Trainer(cfg, DistEnv(0, 2, 0, torch.device("cpu")), tmp_path,
                TrainModule(student, build_method(cfg.method, student.feature_dim, None)), None, None, None,
                (0.5,), (0.25,), Plan(8, 2, 1))


def test_weights_finite_reads_once_and_sees_nan_and_inf():
    model = build_model("resnet8", 10, 3)
    assert weights_finite(model)
    with torch.no_grad():
        next(model.parameters()).fill_(3e38)  # finite, although its 2-norm would overflow
    assert weights_finite(model)
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            list(model.parameters())[-1].view(-1)[0] = bad
        assert not weights_finite(model)


def test_bank_rows_travel_pickled_without_their_memmap(tmp_path):
    """BankRows goes to DataLoader workers: pickled without the mapped file, reopened by the process reading it."""
    features = np.arange(2 * 5 * 3, dtype=np.float16).reshape(2, 5, 3)
    (tmp_path / "features.bin").write_bytes(features.tobytes())
    rows = BankRows(tmp_path, {"shape": [2, 5, 3], "dtype": "float16"})
    rows.open()
    copy = pickle.loads(pickle.dumps(rows))
    assert len(pickle.dumps(rows)) < 1000 and copy._features is None
    batch = copy(Batch(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64),
                       torch.tensor([4, 0, 2]), torch.tensor([1, 0, 1])))
    assert batch.features is not None and batch.features.dtype == torch.float16
    assert np.array_equal(batch.features.numpy(), features[[1, 0, 1], [4, 0, 2]])
    assert Path(copy.folder) == tmp_path
