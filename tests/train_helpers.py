"""Run real pekd training processes from tests: alone, or as N ranks over gloo (the way torchrun/SLURM do)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tests.warm_start import Server, WarmChild, import_time_env, read_all

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
    # prepend, not replace: a node's own PYTHONPATH (a GPU node's wheelhouse) must still reach the child
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    if world > 1:
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
    return env


class Child(subprocess.Popen):
    """A test's child process that can neither hang its test nor outlive it.

    Its stdout and stderr go to unnamed files, not pipes: a pipe holds 64 KiB, and a test that polls the run
    directory reads nothing until the child exits, so a child that writes more (a storm of warnings) would block
    forever in write() while the test waits for it. It runs in a session of its own, so `kill_group` ends it
    with everything it started (DataLoader workers); tests/conftest.py does that after every test for the
    children still alive, however the test ended.
    """

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        self.out_file, self.err_file = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        super().__init__(args, stdout=self.out_file, stderr=self.err_file, start_new_session=True, **kwargs)
        LIVE.append(self)

    def output(self) -> tuple[str, str]:
        """Everything the child wrote so far to stdout and stderr."""
        return read_all(self.out_file), read_all(self.err_file)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait()
        self.out_file.close()
        self.err_file.close()


# Children not yet killed by tests/conftest.py's per-test teardown.
LIVE: list[Child] = []


def until(condition: Callable[[], bool], what: str, timeout: float = 300, procs: Sequence[Child] = (),
          interval: float = 0.05) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds, or as soon as one of `procs` has exited
    (it never will hold then: better the child's own error now than a timeout later)."""
    deadline = time.monotonic() + timeout
    while not condition():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: the child exited with {p.returncode} first\n{p.output()[1][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)


_SERVERS: dict[tuple[tuple[str, str], ...], Server] = {}  # by import-time environment


def spawn(args: list[str], env: dict[str, str], cwd: Path = REPO, warm: bool = True,
          **kwargs: Any) -> Child | WarmChild:
    """`python args` as a child: warm for `-m module ...` (tests/warm_start.py: forked by a server that has
    imported torch with the same import-time environment, seconds less a start), else cold. `warm=False` for the
    tests whose subject is a fresh interpreter; PEKD_TESTS_COLD=1 makes every start cold (to compare the suite
    both ways)."""
    if warm and args[:1] == ["-m"] and not kwargs and os.environ.get("PEKD_TESTS_COLD") != "1":
        key = import_time_env(env)
        if key not in _SERVERS or _SERVERS[key].proc.poll() is not None:
            _SERVERS[key] = Server(env, REPO)
        child = WarmChild(_SERVERS[key], args[1], args[2:], env, cwd)
        LIVE.append(child)
        return child
    return Child([sys.executable, *args], env=env, cwd=cwd, **kwargs)


def run_python(args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """subprocess.run([python, *args], capture_output=True, text=True) through `spawn`: warm where it can be."""
    child = spawn(args, env_for(0, 1, 0) if env is None else env, cwd)
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill_group()
        raise
    return subprocess.CompletedProcess([sys.executable, *args], child.returncode, *child.output())


def start(overrides: list[str], world: int = 1) -> list[Child]:
    """Start `world` rank processes of `python -m pekd.train overrides`."""
    port = free_port()
    return [spawn(["-m", "pekd.train", *overrides], env_for(r, world, port)) for r in range(world)]


def wait(procs: list[Child], timeout: float = 600) -> list[tuple[int, str]]:
    """Each child's exit status and stderr; all of them must end within `timeout` seconds together, or the test
    fails with their stderr and none of them is left running."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            tails = [p.output()[1][-2000:] for p in procs]
            for q in procs:
                q.kill_group()
            raise AssertionError(f"still running after {timeout:.0f} s; stderr tails: {tails}") from None
    return [(p.returncode, p.output()[1]) for p in procs]


def train(overrides: list[str], world: int = 1, timeout: float = 600) -> list[tuple[int, str]]:
    return wait(start(overrides, world), timeout)


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    """Student + projector weights of the newest checkpoint."""
    from pekd.engine import checkpoint as ckpt

    hit = ckpt.newest_valid(run_dir / "checkpoints")
    assert hit is not None, f"no valid checkpoint in {run_dir}"
    return hit[1]["model"]


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` at `where` (root mounts it; CI runs as root, so there a failed mount fails the test).

    pytest is imported here, not at the top: bench/gpu_check imports this module on nodes that may lack pytest."""
    import pytest

    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        if os.geteuid() == 0:
            pytest.fail(f"root cannot mount a tmpfs ({done.stderr.strip()}): these filesystem tests must run in CI")
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)
