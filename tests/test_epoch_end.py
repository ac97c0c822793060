"""Nothing is lost at an epoch end: the checkpoint comes before the evaluation, a stop during a long evaluation
stops it, and the resumed run evaluates first and records it as an uninterrupted run does."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pekd.engine import checkpoint as ckpt
from pekd.models import read_weights
from tests.train_helpers import TINY, Child, start, train, until, wait

pytestmark = pytest.mark.slow

# Two steps of training per epoch, then a long evaluation: 2,001 Fashion-MNIST test images one at a time
# (several seconds; the ranks' shards differ by one batch), so a signal sent when it starts lands inside it.
SLOW_EVAL = TINY + ["data=fashion_mnist", "data.subset=64", "data.batch_size=32", "data.val_subset=2001",
                    "data.eval_batch_size=1", "method=ce", "teacher=none", "trainer.epochs=2",
                    "trainer.milestones=[1]", "trainer.audit_samples=true"]


def wait_for_line(log: Path, text: str, timeout: float = 300, procs: Sequence[Child] = ()) -> None:
    until(lambda: log.exists() and text in log.read_text(), f"{log} saying {text!r}", timeout, procs)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_stop_during_evaluation_loses_nothing(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert all(rc == 0 for rc, _ in train(SLOW_EVAL + [f"run_dir={ref}"], world=2))

    args = SLOW_EVAL + [f"run_dir={cut}"]
    procs = start(args, world=2)
    wait_for_line(cut / "logs" / "rank0.log", "epoch 0: evaluating", procs=procs)
    os.kill(procs[1].pid, signal.SIGUSR2)  # one rank: the ranks agree during the evaluation
    results = wait(procs)
    assert all(rc == 3 for rc, _ in results), [(rc, err[-2000:]) for rc, err in results]
    # Stopped inside the evaluation (no result logged), not after it -- a check that holds however slow the machine
    # is, unlike a bound on the seconds it took; each rank says once why it stopped.
    for rank, why in ((0, "another rank received a stop signal"), (1, "received SIGUSR2 (x 1)")):
        log = (cut / "logs" / f"rank{rank}.log").read_text()
        assert "epoch 0: top-1" not in log, log[-3000:]
        assert log.count("stopped during the evaluation of epoch 0") == 1 and \
            f"{why}: stopped during the evaluation of epoch 0" in log, log[-3000:]
    assert json.loads((cut / "results.json").read_text())["status"] == "preempted"
    [(path, state)] = [(p, ckpt.load(p)) for p in ckpt.list_checkpoints(cut / "checkpoints")]
    assert ckpt.checkpoint_step(path) == 2 and (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert state["pending_eval"] == {"epoch": 0.0, "lr": 0.05} and state["history"] == []

    assert all(rc == 0 for rc, _ in train(args, world=2))
    log0 = (cut / "logs" / "rank0.log").read_text()
    assert "epoch 0's evaluation is pending and runs first" in log0
    assert log0.count("epoch 0: evaluating") == 2 and log0.count("epoch 0: top-1") == 1
    for rank in (0, 1):  # every step trained once: the epoch was not retrained after the restart
        lines = (cut / "logs" / f"samples-rank{rank}.txt").read_text().splitlines()
        assert Counter(tuple(map(int, ln.split()[:2])) for ln in lines) == {(0, 0): 1, (0, 1): 1, (1, 2): 1,
                                                                             (1, 3): 1}

    a, b = (json.loads((d / "results.json").read_text()) for d in (ref, cut))
    # the only differences: whose lease wrote it (the uninterrupted run's first owner, the resumed run's second) and
    # the wall time it took
    assert (a.pop("lease_generation"), b.pop("lease_generation")) == (1, 2)
    assert all(r.pop("seconds") > 0 for r in (a, b))
    assert a == b and b["status"] == "completed" and len(b["history"]) == 2
    for name in ("best.pt", "student.pt"):
        sa, sb = (read_weights(str(d / name))[0] for d in (ref, cut))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    for tag in ("val/top1", "val/top5", "train/loss"):
        assert scalars(ref, tag) == scalars(cut, tag), tag
    assert [s for s, _ in scalars(cut, "val/top1")] == [2, 4]
