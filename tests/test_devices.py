"""Trains on the device it was given, or says why: GPUs allocated to a process whose torch cannot use them stop the
run with one error (not a silent CPU run), and a CPU-only torch build cannot submit GPU jobs."""

from __future__ import annotations

import pytest
import torch

from launchers.submit import main as submit
from pekd.engine.devices import allocated_gpus, check_cuda_usable
from tests.train_helpers import TINY, env_for, run_python

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch that sees no GPU")


@needs_no_gpu
@pytest.mark.parametrize("var, value", [("CUDA_VISIBLE_DEVICES", "0"), ("SLURM_JOB_GPUS", "0,1")])
def test_allocated_gpus_torch_cannot_use_are_one_error(tmp_path, var, value):
    """The real entry point, ~10 s each: exit 2, one line naming both CUDA sides and the fix, nothing written."""
    env = {k: v for k, v in env_for(0, 1, 0).items() if k != "CUDA_VISIBLE_DEVICES"} | {var: value}
    run_dir = tmp_path / "run"
    p = run_python(["-m", "pekd.train", *TINY, "method=ce", "teacher=none", f"run_dir={run_dir}"], env)
    assert p.returncode == 2, p.stderr[-3000:]
    [line] = p.stderr.strip().splitlines()
    assert line.startswith(f"error: GPUs were allocated ({var}={value}) but torch sees none: torch "
                           f"{torch.__version__} is "), line
    assert (f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build") in line
    assert "NVIDIA driver" in line and "docs/install.md" in line and "CUDA_VISIBLE_DEVICES= (empty)" in line
    assert not run_dir.exists()


@pytest.mark.parametrize("env, allocated", [
    ({}, None),
    ({"CUDA_VISIBLE_DEVICES": "1,2"}, "CUDA_VISIBLE_DEVICES=1,2"),
    ({"CUDA_VISIBLE_DEVICES": ""}, None),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None),
    ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None),  # SLURM's gres plugin, for a job that asked for no GPU
    ({"SLURM_GPUS_ON_NODE": "0"}, None),
    ({"SLURM_GPUS_ON_NODE": "4"}, "SLURM_GPUS_ON_NODE=4"),
    ({"SLURM_STEP_GPUS": "3"}, "SLURM_STEP_GPUS=3"),
    ({"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": ""}, None),  # GPUs hidden on purpose: CPUs wanted
])
def test_which_variables_mean_gpus_were_allocated(monkeypatch, env, allocated):
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert allocated_gpus() == allocated
    if allocated is None:
        check_cuda_usable()  # CPU runs with no GPU allocated (the demo, the suite) go on


def test_a_cpu_only_torch_cannot_submit_gpu_jobs(monkeypatch, tmp_path, capsys):
    """Refused before anything is planned or submitted (the local SLURM tests submit with --gpus 0). This torch
    is a CUDA build, so the CPU-only build is simulated by torch.version.cuda = None, what such a build reports."""
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(SystemExit) as e:
        submit(["--gpus", "2", "--local", "--folder", str(tmp_path / "jobs"), "data=digits"])
    assert e.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: --gpus 2, but this Python's torch {torch.__version__} is a CPU-only build; install "
                    "the CUDA build that matches the nodes' NVIDIA driver (docs/install.md), or submit with --gpus 0 "
                    "for CPU tasks")
    assert not (tmp_path / "jobs").exists()
