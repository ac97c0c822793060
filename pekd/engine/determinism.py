"""trainer.deterministic: the switches that make a CUDA run repeatable, or else the fast cuDNN autotuner.

torch.use_deterministic_algorithms alone is not enough on CUDA: cuBLAS needs a fixed workspace configuration
(CUBLAS_WORKSPACE_CONFIG, read when its first handle is made, so it must be set before the first matmul; without
it deterministic mode raises at the first cuBLAS call), and cuDNN must neither pick nondeterministic kernels nor
autotune (benchmark mode may pick different algorithms from run to run). Without determinism, benchmark mode lets
cuDNN time its algorithms once per input shape and keep the fastest, which pays off for fixed-shape training.
"""

from __future__ import annotations

import os

import torch

# One of the two settings NVIDIA documents for reproducible cuBLAS (the other, ":16:8", uses less memory).
CUBLAS_WORKSPACE = ":4096:8"


def configure(deterministic: bool, device: torch.device) -> None:
    """Call once per run, before the model is built (the first cuBLAS call). Every switch is set both ways: runs
    that share a process (the demo's workers, in-process tests) must not inherit an earlier run's mode. A
    CUBLAS_WORKSPACE_CONFIG already in the environment is the user's choice and is kept."""
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
