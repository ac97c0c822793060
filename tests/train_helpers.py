"""Run real pekd training processes from tests: alone, or as N ranks over gloo (the way torchrun/SLURM do)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# A tiny, deterministic recipe on sklearn's digits: ~1.4k images, 8x8, resnet8.
TINY = ["data=digits", "model=resnet8", "trainer.progress=false", "trainer.threads=1",
        "trainer.deterministic=true", "trainer.amp=off", "trainer.log_every_steps=1", "data.workers=0"]


DIST_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "PYTEST_CURRENT_TEST"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(rank: int, world: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    if world > 1:
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
    return env


def start(overrides: list[str], world: int = 1) -> list[subprocess.Popen]:
    """Start `world` rank processes of `python -m pekd.train overrides`."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "pekd.train", *overrides], env=env_for(r, world, port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
            for r in range(world)]


def wait(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err))
    return out


def train(overrides: list[str], world: int = 1, timeout: float = 600) -> list[tuple[int, str]]:
    return wait(start(overrides, world), timeout)


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    """Student + projector weights of the newest checkpoint."""
    from pekd.engine import checkpoint as ckpt

    hit = ckpt.newest_valid(run_dir / "checkpoints")
    assert hit is not None, f"no valid checkpoint in {run_dir}"
    return hit[1]["model"]
