"""`python -m bench.gpu_check.preflight [FASHION_MNIST_DIR]`: what this node is, and what the check cannot check.

Prints Python, torch, CUDA, cuDNN, NCCL and the driver; the GPU (name, compute capability, memory); and what is
absent -- ffcv, DALI, a C compiler and Python's headers (Triton compiles a small launcher with them the first time
torch.compile runs; without them a compiled run fails at its first step), a second GPU (multi-rank NCCL), the
Fashion-MNIST folder -- each named with the checks it leaves NOT CHECKED. PASS means pekd's entry point imports
and composes a config here; the environment itself is reported, not judged.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import torch

from bench.gpu_check.common import PASS, run_step, work_dir

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")


def c_compiler() -> str | None:
    """The compiler Triton would use: $CC, else cc/gcc/clang on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def python_headers() -> str | None:
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return str(header) if header.exists() else None


def no_triton() -> str | None:
    """Why torch.compile cannot run on this node's GPU (Triton builds a launcher with a C compiler and Python.h the
    first time), or None: the speed steps then leave their compiled and graphed candidates out, NOT CHECKED."""
    if c_compiler() and python_headers():
        return None
    return f"Triton needs a C compiler and Python.h: cc={c_compiler()} Python.h={python_headers()}"


def driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def fashion_dir() -> str | None:
    folder = sys.argv[1] if len(sys.argv) > 1 else ""
    return folder if folder and all((Path(folder) / f).exists() for f in FASHION_FILES) else None


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "driver": driver(),
        "gpus": torch.cuda.device_count() if cuda else 0,
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpus": os.cpu_count(),
        "c_compiler": c_compiler(),
        "python_headers": python_headers(),
        "triton": importlib.util.find_spec("triton") is not None,
        "ffcv": importlib.util.find_spec("ffcv") is not None,
        "dali": importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None,
        "fashion_mnist": fashion_dir(),
    }
    if cuda:
        p = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}",
                      "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count}
    return env


def not_checkable(env: dict[str, Any]) -> dict[str, str]:
    """What this node cannot show, and why: each is reported NOT CHECKED (or left out), never passed."""
    gaps = {}
    if not env["gpus"]:
        gaps["every CUDA step"] = "torch sees no CUDA device"
    elif env["gpus"] < 2:
        gaps["multi-rank NCCL"] = "needs 2 GPUs (nccl_1proc creates a real 1-rank NCCL group instead)"
    if not (env["c_compiler"] and env["python_headers"] and env["triton"]):
        gaps["compiled runs"] = ("torch.compile's Triton needs a C compiler, Python.h and triton: "
                                 f"cc={env['c_compiler']}, Python.h={env['python_headers']}, triton={env['triton']}")
    if not env["ffcv"]:
        gaps["FFCV pipeline"] = "ffcv is not installed (pekd[ffcv])"
    if not env["dali"]:
        gaps["DALI pipeline"] = "nvidia-dali is not installed (pekd[dali-cu13])"
    if not env["fashion_mnist"]:
        gaps["fashion_mnist"] = "no Fashion-MNIST folder given (bench/gpu_check.sh --fashion-mnist DIR)"
    return gaps


def main() -> tuple[str, str, dict[str, Any]]:
    env = environment()
    (work_dir("preflight") / "gpus").write_text(str(env["gpus"]))  # the shell script skips CUDA-only steps on 0
    gaps = not_checkable(env)
    for k, v in env.items():
        print(f"  {k:>20}: {v}")
    for k, v in gaps.items():
        print(f"  cannot check {k}: {v}")
    from pekd.train import compose_config  # pekd and its config stack import, and a recipe composes

    compose_config(["data=digits", "model=resnet8", "method=ce", "teacher=none", "run_dir=/tmp/pekd_preflight"])
    gpu = env.get("gpu")
    where = (f"{gpu['name']} sm_{gpu['capability'].replace('.', '')} {gpu['memory_gib']} GiB x{env['gpus']}"
             if gpu else "no CUDA device")
    figure = (f"{where}; torch {env['torch']} CUDA {env['cuda_build']} cuDNN {env['cudnn']} NCCL {env['nccl']} "
              f"driver {env['driver']}; Python {platform.python_version()}; cannot check: "
              f"{', '.join(gaps) or 'nothing'}")
    return PASS, figure, {"environment": env, "not_checkable": gaps}


if __name__ == "__main__":
    run_step("preflight", main)
