"""The same command resumes: without run_dir, a run's directory is a pure function of its config (name + hash),
so typing the interrupted command again -- or torchrun restarting it -- continues where it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.train_helpers import TINY, env_for, final_model

COMMAND = [sys.executable, "-m", "pekd.train", *TINY, "method=ce", "teacher=none", "trainer.epochs=3",
           "trainer.milestones=[2]", "name=same_cmd"]


def _start(cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(COMMAND, cwd=cwd, env=env_for(0, 1, 0), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _run_dirs(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "runs").iterdir()) if (cwd / "runs").is_dir() else []


def _global_step(run_dir: Path) -> int:
    log = run_dir / "logs" / "rank0.log"
    steps = [int(line.split("(global ")[1].split(")")[0]) for line in
             (log.read_text().splitlines() if log.exists() else []) if "(global " in line]
    return steps[-1] if steps else 0


def test_rerunning_the_interrupted_command_resumes_its_own_run_directory(tmp_path: Path) -> None:
    here, reference = tmp_path / "here", tmp_path / "reference"
    here.mkdir()
    reference.mkdir()
    proc = _start(here)
    deadline = time.time() + 300
    while time.time() < deadline and not (_run_dirs(here) and _global_step(_run_dirs(here)[0]) >= 40):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGUSR2)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    [run_dir] = _run_dirs(here)
    assert run_dir.name.startswith("same_cmd-") and f"run {run_dir}:" in err  # printed at start

    again = _start(here)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert _run_dirs(here) == [run_dir]
    assert "resumed from" in err, err[-3000:]
    uninterrupted = _start(reference)
    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err
    [other] = _run_dirs(reference)
    assert other.name == run_dir.name, "the name is a function of the config, not of the time or the folder"
    a, b = final_model(run_dir), final_model(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_config_gets_another_directory(tmp_path: Path) -> None:
    from pekd.train import compose_config

    base = compose_config([*TINY, "method=ce", "teacher=none", "name=x"])
    same = compose_config([*TINY, "method=ce", "teacher=none", "name=x", "trainer.progress=true", "data.workers=1"])
    other = compose_config([*TINY, "method=ce", "teacher=none", "name=x", "seed=1"])
    assert base.run_dir == same.run_dir != other.run_dir
    assert str(base.run_dir).startswith(os.path.join("runs", "x-"))
