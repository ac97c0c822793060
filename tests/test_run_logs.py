"""Logs and results where users look: a progress bar only on a terminal and never in the log files, and a
metrics.csv per run that holds what TensorBoard holds.

Two real `python -m pekd.train` runs (digits, CE, 1 epoch of 44 steps; ~30 s each here): one with its stderr on a
pseudo-terminal, one on pipes as under SLURM. pandas is not installed in this environment, so metrics.csv is read
with the csv module (it is plain RFC-4180 CSV with a header: `pd.read_csv` reads the same rows).
"""

from __future__ import annotations

import csv
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pekd.engine.metrics_csv import HEADER, MetricsCSV
from tests.train_helpers import REPO, TINY, run_python

RUN = [*TINY, "method=ce", "teacher=none", "trainer.epochs=1", "trainer.milestones=[1]", "trainer.progress=true",
       "trainer.log_every_steps=5"]


def _train(run_dir: Path, terminal: bool) -> str:
    """Run with stderr on a pseudo-terminal (terminal=True) or a file; returns what the console got."""
    argv = [sys.executable, "-m", "pekd.train", *RUN, f"run_dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if not terminal:
        out = run_python(argv[1:], timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout + out.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    console = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        console += chunk
    assert proc.wait(timeout=600) == 0, console[-2000:]
    os.close(leader)
    return console.decode(errors="replace")


@pytest.mark.parametrize("terminal", [True, False])
def test_bars_only_on_a_terminal_and_never_in_the_logs(tmp_path: Path, terminal: bool) -> None:
    run_dir = tmp_path / "run"
    console = _train(run_dir, terminal)
    assert ("\r" in console) == terminal  # tqdm's frames on a terminal; nothing of the kind on a pipe
    for log in ("rank0.out", "rank0.log"):
        text = (run_dir / "logs" / log).read_text()
        assert "\r" not in text, log
    assert "epoch 0 step 5/44" in (run_dir / "logs" / "rank0.log").read_text()  # the log lines say the progress


def test_metrics_csv_holds_every_scalar_tensorboard_holds(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _train(run_dir, terminal=False)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == HEADER
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    for tag in acc.Tags()["scalars"]:
        events = [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)]
        assert [(int(r["step"]), float(r["value"])) for r in rows if r["tag"] == tag] == events, tag
    results = json.loads((run_dir / "results.json").read_text())
    [top1] = [float(r["value"]) for r in rows if r["tag"] == "val/top1"]
    assert top1 == pytest.approx(results["last_top1"], abs=1e-3)


def test_a_resumed_run_drops_the_rows_after_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    first = MetricsCSV(path, resumed_step=0)
    for step in range(1, 11):
        first.add(step, {"train/loss": 1.0 / step})
    first.close()  # killed after step 10, checkpointed at step 6
    again = MetricsCSV(path, resumed_step=6)
    again.add(7, {"train/loss": 0.5})
    again.close()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert float(rows[-1]["value"]) == 0.5


def test_precompute_draws_no_bar_off_a_terminal(tmp_path: Path) -> None:
    """The feature bank's progress bar follows the training bars: off a terminal (SLURM's .err, a pipe) the log
    line 'rank 0: N images in ...' says it, and no bar frames are written."""
    run_dir = tmp_path / "teacher"
    _train(run_dir, terminal=False)
    argv = [sys.executable, "-m", "pekd.precompute", *TINY, "teacher.name=resnet8",
            f"teacher.weights={run_dir / 'student.pt'}", f"teacher.bank={tmp_path / 'bank'}", "bank.views=1",
            "trainer.progress=true"]
    out = run_python(argv[1:], timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "images in" in out.stdout + out.stderr
    assert "teacher features" not in out.stdout + out.stderr, out.stderr  # the bar's frames (text mode reads \r as \n)
