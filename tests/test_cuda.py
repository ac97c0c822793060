"""What only a CUDA machine can show (`pytest tests/test_cuda.py` on a GPU node; elsewhere each test is skipped with
its reason): trainer.deterministic needs no CUBLAS_WORKSPACE_CONFIG from the user, since pekd sets it.
bench/gpu_check.sh does not run this file; its determinism step checks the same property in one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_helpers import REPO, TINY, env_for, final_model

pytestmark = [pytest.mark.cuda,  # its child processes must see the GPU (tests/conftest.py hides it from the others)
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs CUDA: run `pytest tests/test_cuda.py` on a GPU node "
                                 "(bench/gpu_check.sh's determinism step checks the same in one process)")]


def test_deterministic_training_repeats_bit_for_bit_without_the_users_cublas_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in env_for(0, 1, 0).items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    weights = []
    for i in range(2):
        run_dir = tmp_path / f"run{i}"
        done = subprocess.run([sys.executable, "-m", "pekd.train", *TINY, "method=ce", "teacher=none",
                               "trainer.max_steps=20", f"run_dir={run_dir}"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        weights.append(final_model(run_dir))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
