"""Which device a process trains on, and the refusal to fall back to CPUs when GPUs were allocated to it.

torch reports a GPU it cannot use exactly like no GPU at all: `torch.cuda.is_available()` is False both on a CPU
node and on a GPU node whose driver is older than the CUDA torch was built for (a CUDA 13 wheel on a CUDA 12
driver), or with a CPU-only torch build. Falling back to gloo on CPUs there trains for days on the wrong device
with nothing in the log. So when the scheduler or the user allocated GPUs (CUDA_VISIBLE_DEVICES, SLURM's GPU
variables) and torch sees none, the run stops with one error naming both CUDA versions and the fix.
"""

from __future__ import annotations

import os
import re
import subprocess

import torch

from pekd.errors import PekdError

# CUDA_VISIBLE_DEVICES values that hide every GPU: "" and "-1" by convention, NoDevFiles from SLURM's gres plugin
# when a job asked for no GPU on a node that has some.
HIDDEN = ("", "-1", "NoDevFiles")
SLURM_GPU_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def allocated_gpus() -> str | None:
    """The variable (as NAME=value) that says this process was given GPUs, or None. A CUDA_VISIBLE_DEVICES that
    hides every GPU is a deliberate choice of CPUs and wins over SLURM's variables."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return None if visible.split(",")[0].strip() in HIDDEN else f"CUDA_VISIBLE_DEVICES={visible}"
    for name in SLURM_GPU_VARS:
        value = os.environ.get(name, "").strip()
        if value and value != "0":
            return f"{name}={value}"
    return None


def driver_version() -> str:
    """'the NVIDIA driver is <version> (runs CUDA up to <x.y>)' from nvidia-smi or /proc, or 'no NVIDIA driver
    found'."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    found = re.search(r"Driver Version:\s*(\S+)", out)
    if found:
        cuda = re.search(r"CUDA Version:\s*(\S+)", out)
        return f"the NVIDIA driver is {found[1]}" + (f" (runs CUDA up to {cuda[1]})" if cuda else "")
    try:
        with open("/proc/driver/nvidia/version") as f:
            found = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", f.read())
    except OSError:
        found = None
    return f"the NVIDIA driver is {found[1]}" if found else "no NVIDIA driver found"


def check_cuda_usable() -> None:
    """Raise one PekdError if GPUs were allocated but torch cannot use any (called where CUDA is unavailable)."""
    allocated = allocated_gpus()
    if allocated is None:
        return
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    raise PekdError(f"GPUs were allocated ({allocated}) but torch sees none: torch {torch.__version__} is "
                    f"{build}; {driver_version()}; install the torch build that matches the "
                    "driver (docs/install.md, 'CUDA 12 or 13'); to train on CPUs on purpose, set "
                    "CUDA_VISIBLE_DEVICES= (empty)")


def describe(device: torch.device) -> str:
    """The device as the start line names it: 'cuda:0 (NVIDIA H200)' or 'cpu'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
