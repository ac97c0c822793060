"""The same command resumes: without run_dir, a run's directory is a pure function of its config (name + hash),
so typing the interrupted command again -- or torchrun restarting it -- continues where it stopped."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from tests.train_helpers import TINY, env_for, final_model, spawn, until, wait

COMMAND = ["-m", "pekd.train", *TINY, "method=ce", "teacher=none", "trainer.epochs=3",
           "trainer.milestones=[2]", "name=same_cmd"]


def _run(cwd: Path) -> tuple[int, str]:
    [(rc, err)] = wait([spawn(COMMAND, env_for(0, 1, 0), cwd)])
    return rc, err


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
    proc = spawn(COMMAND, env_for(0, 1, 0), here)
    until(lambda: bool(_run_dirs(here)) and _global_step(_run_dirs(here)[0]) >= 40, "global step 40", procs=[proc])
    os.kill(proc.pid, signal.SIGUSR2)
    [(rc, err)] = wait([proc])
    assert rc == 3, err
    [run_dir] = _run_dirs(here)
    assert run_dir.name.startswith("same_cmd-") and f"run {run_dir}:" in err  # printed at start

    rc, err = _run(here)
    assert rc == 0, err
    assert _run_dirs(here) == [run_dir]
    assert "resumed from" in err, err[-3000:]
    rc, err = _run(reference)
    assert rc == 0, err
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
