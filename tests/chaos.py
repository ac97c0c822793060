"""Many faults in a row: one run driven through N interruptions at random steps, restarted with the same command
after each, then checked against the same recipe run uninterrupted (used by tests/test_chaos.py and bench/soak.py).

Interruptions: SIGUSR2 and SIGTERM (checkpoint at the next boundary, exit 3), SIGKILL at a random step, and SIGKILL
while a checkpoint is being written (a temp file `.ckpt-*.tmp-<pid>` is in checkpoints/). What must hold:

- no completed checkpoint is lost: every restart resumes from a step at least as new as the newest checkpoint
  that verified before the interruption;
- nothing corrupt is resumed from: every file under a checkpoint name verifies, after every interruption;
- every sample is seen exactly once per epoch (the sample audit, trainer.audit_samples): a step that is replayed
  after a SIGKILL shows exactly the samples it showed the first time, and each epoch's samples are the
  uninterrupted run's, each once;
- the final weights equal the uninterrupted run's bit for bit (with SIGKILLs too: a resumed run replays the
  steps it lost exactly).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pekd.engine import checkpoint as ckpt
from pekd.errors import PekdError
from tests.train_helpers import TINY, Child, start, until, wait

KINDS = ("usr2", "term", "kill", "kill_mid_checkpoint")
CKPT_EVERY = 5  # trainer.ckpt_every_steps of the recipe
STEPS_PER_EPOCH = 44  # digits: 1437 training images, batch 32, drop_last


def recipe(run_dir: Path, epochs: int) -> list[str]:
    """The chaos recipe: plain CE on digits, a checkpoint every 5 steps, the sample audit on."""
    return TINY + ["method=ce", "teacher=none", f"trainer.epochs={epochs}", "trainer.milestones=[100]",
                   f"trainer.ckpt_every_steps={CKPT_EVERY}", "trainer.audit_samples=true", "trainer.sync_every_steps=1",
                   f"run_dir={run_dir}"]


@dataclass
class Figures:
    interruptions: Counter[str] = field(default_factory=Counter)
    mid_write_hits: int = 0  # kill_mid_checkpoint that caught a temp file (the rest fell back to a plain kill)
    steps_recomputed: int = 0  # steps trained again after a SIGKILL lost them
    chaos_s: float = 0.0  # wall time of the interrupted run, every restart included
    reference_s: float = 0.0  # wall time of the uninterrupted run

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {self.interruptions[k]}" for k in KINDS)
        return (f"interruptions survived: {sum(self.interruptions.values())} ({kinds}; {self.mid_write_hits} kills "
                f"landed inside a checkpoint write)\nsteps recomputed: {self.steps_recomputed}\n"
                f"time lost: {self.chaos_s - self.reference_s:.1f} s ({self.chaos_s:.1f} s interrupted vs "
                f"{self.reference_s:.1f} s uninterrupted)")


def audit_steps(run_dir: Path) -> list[tuple[int, int, tuple[int, ...]]]:
    """(epoch, global step, sample indices) of every complete line of the audit, in the order written."""
    path = run_dir / "logs" / "samples-rank0.txt"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().split("\n")[:-1]:  # the last piece has no newline yet (or is empty)
        epoch, step, *idx = (int(v) for v in line.split())
        out.append((epoch, step, tuple(idx)))
    return out


def audit_size(run_dir: Path) -> int:
    try:
        return (run_dir / "logs" / "samples-rank0.txt").stat().st_size
    except FileNotFoundError:
        return 0


def last_step(run_dir: Path, since: int = 0) -> int:
    """The newest global step the audit shows in what was written after byte `since` (-1: none yet), so a restarted
    trainer's progress is not read from its predecessor's lines; cheap enough to poll (reads the file's tail)."""
    path = run_dir / "logs" / "samples-rank0.txt"
    try:
        with open(path, "rb") as f:
            f.seek(max(since, os.fstat(f.fileno()).st_size - 4096))
            lines = f.read().split(b"\n")[:-1]
    except FileNotFoundError:
        return -1
    return int(lines[-1].split()[1]) if lines else -1


def newest_verified_step(run_dir: Path) -> int:
    """The step of the newest checkpoint that verifies; asserts every file under a checkpoint name verifies."""
    newest = -1
    for p in ckpt.list_checkpoints(run_dir / "checkpoints"):
        try:
            ckpt.load(p)  # raises: a corrupt file under a real checkpoint name
        except PekdError:
            if not p.exists():  # pruned (keep_last) by the running trainer between the listing and the load
                continue
            raise
        newest = max(newest, ckpt.checkpoint_step(p))
    return newest


def interrupt(proc: Child, kind: str, run_dir: Path, figures: Figures, since: int = 0, give_up_step: int = 1 << 30
              ) -> None:
    """Deliver one interruption to a running trainer and wait for it to end the way that kind must. A kill inside a
    checkpoint write waits for a temp file only until the trainer reaches `give_up_step` (in the audit written after
    byte `since`): then it is a plain SIGKILL, so a missed write never lets the run train on to its end."""
    if kind in ("usr2", "term"):
        os.kill(proc.pid, signal.SIGUSR2 if kind == "usr2" else signal.SIGTERM)
        [(rc, err)] = wait([proc], timeout=300)
        assert rc == 3, f"{kind}: exit {rc}, not 3 (checkpointed and preempted)\n{err[-3000:]}"
        return
    if kind == "kill_mid_checkpoint":
        folder, deadline = run_dir / "checkpoints", time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None and last_step(run_dir, since) < give_up_step:
            if any(".tmp-" in name for name in os.listdir(folder)):
                figures.mid_write_hits += 1
                break
            time.sleep(0.0005)
    proc.kill_group()


def chaos(run_dir: Path, epochs: int, kinds: list[str], rng: random.Random, figures: Figures) -> None:
    """Drive one run through `kinds` (one interruption each, at a random step), then let it finish."""
    total = epochs * STEPS_PER_EPOCH
    slot = (total - 8) / len(kinds)  # the i-th interruption falls in the i-th slot: room left for all of them
    assert slot >= 1, f"{len(kinds)} interruptions do not fit in {total} steps; train more epochs"
    t0 = time.monotonic()
    for i, kind in enumerate(kinds):
        # the restart resumes after its newest checkpoint: the target lies beyond that, in this interruption's slot
        # and before the last step (a run that reaches its end completes and cannot be interrupted any more)
        before = max(newest_verified_step(run_dir), 0)
        target = min(rng.randint(before + 1, max(before + 1, int((i + 1) * slot))), total - 1)
        since = audit_size(run_dir)
        [proc] = start(recipe(run_dir, epochs))
        until(lambda t=target, b=since: last_step(run_dir, b) >= t, f"step {target} before the {kind}", procs=[proc])
        newest_before = newest_verified_step(run_dir)
        interrupt(proc, kind, run_dir, figures, since, min(target + 2 * CKPT_EVERY, total - 1))
        figures.interruptions[kind] += 1
        reached = last_step(run_dir)
        newest = newest_verified_step(run_dir)
        assert newest >= newest_before, f"{kind}: checkpoint of step {newest_before} lost (newest now {newest})"
        figures.steps_recomputed += max(0, reached - max(newest, 0))
    [proc] = start(recipe(run_dir, epochs))
    [(rc, err)] = wait([proc], timeout=900)
    assert rc == 0, err[-3000:]
    figures.chaos_s = time.monotonic() - t0


def check_audit(run_dir: Path, reference_dir: Path) -> None:
    """Each replayed step showed what it showed first; each epoch saw the uninterrupted run's samples, once each."""
    seen: dict[int, tuple[int, tuple[int, ...]]] = {}
    for epoch, step, idx in audit_steps(run_dir):
        if step in seen:
            assert seen[step] == (epoch, idx), f"global step {step} showed other samples when it was replayed"
        seen[step] = (epoch, idx)
    ref = {step: (epoch, idx) for epoch, step, idx in audit_steps(reference_dir)}
    assert sorted(seen) == sorted(ref), "the interrupted run took other steps than the uninterrupted one"
    by_epoch: dict[int, list[int]] = {}
    for epoch, idx in seen.values():
        by_epoch.setdefault(epoch, []).extend(idx)
    for epoch, samples in by_epoch.items():
        assert len(samples) == len(set(samples)), f"epoch {epoch}: a sample seen twice"
        expected = sorted(i for e, idx in ref.values() if e == epoch for i in idx)
        assert sorted(samples) == expected, f"epoch {epoch}: not the uninterrupted run's samples"


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    hit = ckpt.newest_valid(run_dir / "checkpoints")
    assert hit is not None
    return hit[1]["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs from the uninterrupted run"


def reference_run(run_dir: Path, epochs: int, figures: Figures) -> None:
    t0 = time.monotonic()
    [(rc, err)] = wait(start(recipe(run_dir, epochs)), timeout=900)
    assert rc == 0, err[-3000:]
    figures.reference_s = time.monotonic() - t0
