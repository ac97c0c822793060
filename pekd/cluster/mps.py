"""CUDA MPS for the runs that share a GPU (pekd.cluster.packing): when the node has `nvidia-cuda-mps-control`, a
packed task starts its own MPS control daemon before its runs and stops it after them.

Without MPS, the processes on one GPU time-slice it: each gets the whole GPU in turn, so the small kernels of a
resnet8x4 student never run beside another run's. Under MPS their kernels share the GPU's SMs at once, which is
what makes K small runs on one GPU faster than K runs one after another. MPS is optional: without the binary, or if
the daemon does not start, the runs time-share each GPU and the log says so.

The daemon is the task's own -- pipe and log directories in a fresh temporary folder, passed to the runs through
CUDA_MPS_PIPE_DIRECTORY/CUDA_MPS_LOG_DIRECTORY -- so two jobs on one node (or a site's own daemon) never meet; it
serves the GPUs the task was given (CUDA_VISIBLE_DEVICES as SLURM set it). A node whose site already runs MPS for
the job (CUDA_MPS_PIPE_DIRECTORY set in the environment) is used as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV, LOG_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"


@contextmanager
def gpu_sharing(say: Callable[[str], None]) -> Iterator[dict[str, str]]:
    """MPS for the block, if the node offers it: yields the environment the runs need to use it ({} without)."""
    if os.environ.get(PIPE_ENV):
        say(f"MPS: using the daemon the job was given ({PIPE_ENV}={os.environ[PIPE_ENV]})")
        yield {}
        return
    control = shutil.which(CONTROL)
    if control is None:
        say(f"MPS: no {CONTROL} on this node; the runs of each GPU time-share it")
        yield {}
        return
    root = Path(tempfile.mkdtemp(prefix="pekd-mps-"))
    env = {PIPE_ENV: str(root / "pipe"), LOG_ENV: str(root / "log")}
    for folder in env.values():
        Path(folder).mkdir()
    daemon_env = {**os.environ, **env}
    try:
        started = subprocess.run([control, "-d"], env=daemon_env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        started = subprocess.CompletedProcess([control, "-d"], 1, "", str(e))
    if started.returncode != 0:
        say(f"MPS: `{CONTROL} -d` failed ({' '.join((started.stderr or started.stdout).split()) or 'no message'}); "
            "the runs of each GPU time-share it")
        shutil.rmtree(root, ignore_errors=True)
        yield {}
        return
    say(f"MPS: started a control daemon for GPUs {os.environ.get('CUDA_VISIBLE_DEVICES', '(all)')} "
        f"({PIPE_ENV}={env[PIPE_ENV]})")
    try:
        yield env
    finally:
        try:
            subprocess.run([control], input="quit\n", env=daemon_env, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            say(f"MPS: the control daemon did not quit ({e}); it ends with the job")
        shutil.rmtree(root, ignore_errors=True)


def run_device(index: int, task_devices: list[str], mps_env: dict[str, str]) -> str:
    """CUDA_VISIBLE_DEVICES for a run on the task's index-th GPU. A daemon started under CUDA_VISIBLE_DEVICES numbers
    the GPUs it serves from 0 for its clients (NVIDIA's MPS docs: a client that keeps the daemon's '0,2' fails), so
    under the task's own daemon a run names its GPU by position; otherwise by the name SLURM gave the task."""
    return str(index) if PIPE_ENV in mps_env else task_devices[index]
