"""trainer.deterministic: the switches that make a CUDA run repeatable, or else the fast cuDNN autotuner.

torch.use_deterministic_algorithms alone is not enough on CUDA: cuBLAS needs a fixed workspace configuration
(CUBLAS_WORKSPACE_CONFIG; without one deterministic mode raises at the first cuBLAS call). PyTorch reads that
variable once per process, at its first cuBLAS call, so setting it here -- after a demo worker, an in-process
test or a bench may already have run a matmul -- would be too late: `import pekd` sets it (pekd/__init__.py),
and this module only checks that the value in force is one cuBLAS documents as reproducible. cuDNN must neither
pick nondeterministic kernels nor autotune (benchmark mode may pick different algorithms from run to run).
Without determinism, benchmark mode lets cuDNN time its algorithms once per input shape and keep the fastest,
which pays off for fixed-shape training.
"""

from __future__ import annotations

import os
import sys

import torch

from pekd.errors import PekdError

REPRODUCIBLE_WORKSPACES = (":4096:8", ":16:8")  # the two settings NVIDIA documents for reproducible cuBLAS


def configure(deterministic: bool, device: torch.device) -> None:
    """Call once per run, before the model is built. Every switch is set both ways: runs that share a process
    (the demo's workers, in-process tests) must not inherit an earlier run's mode."""
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if deterministic and device.type == "cuda" and workspace not in REPRODUCIBLE_WORKSPACES:
        raise PekdError(f"trainer.deterministic=true on CUDA needs CUBLAS_WORKSPACE_CONFIG set to one of "
                        f"{list(REPRODUCIBLE_WORKSPACES)} before the process's first matmul, but it is "
                        f"{workspace!r}; unset it (pekd sets {REPRODUCIBLE_WORKSPACES[0]!r} when imported) or set "
                        "trainer.deterministic=false")
    set_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def set_deterministic_algorithms(mode: bool) -> None:
    """torch.use_deterministic_algorithms(mode), less its import of torch._inductor.config while nothing has loaded
    inductor: that import is about 2 s of every process's start on a slow CPU, for a flag only compiled code reads.
    pekd.engine.compilation hands the flag to inductor before it compiles (`inductor_deterministic`)."""
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode)


def inductor_deterministic() -> None:
    """Give inductor the deterministic flag in force, as torch.use_deterministic_algorithms would have."""
    import torch._inductor.config as inductor_config

    inductor_config.deterministic = torch.are_deterministic_algorithms_enabled()
