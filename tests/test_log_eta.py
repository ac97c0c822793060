"""The ETA in a run's periodic log lines: the steps left to the end of training (its last epoch, or
trainer.max_steps when that comes first) at the pace of the steps since the previous log line; the line stays
readable by `pekd status` (pekd.cluster.run_files.STEP_LINE)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from pekd.cluster.run_files import STEP_LINE
from pekd.engine.metrics import Metrics, TrainStats, steps_left
from pekd.engine.progress import Progress, duration_text
from tests.train_helpers import TINY, run_python


class Lines(logging.Handler):
    """The messages the "pekd" logger emits while the test holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize(("epoch", "step", "global_step", "max_steps", "left"), [
    (2, 5, 25, 0, 15),  # (4 - 2) epochs of 10 steps, 5 of them done
    (2, 5, 25, 30, 5),  # trainer.max_steps comes first
    (2, 5, 25, 100, 15),  # the last epoch comes first
    (0, 0, 0, 0, 40),
    (3, 10, 40, 0, 0),  # the last step
    (2, 5, 25, 20, 0),  # past max_steps (a resumed run whose limit was lowered): nothing left, not negative
])
def test_steps_left_to_the_end_of_training(epoch: int, step: int, global_step: int, max_steps: int,
                                           left: int) -> None:
    assert steps_left(Progress(epoch, step, global_step), 10, 4, max_steps) == left


@pytest.mark.parametrize(("seconds", "text"), [(0.2, "0s"), (45, "45s"), (59.6, "1m00s"), (723, "12m03s"),
                                               (7500, "2h05m")])
def test_duration_text_as_pekd_status_writes_it(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_the_eta_counts_the_pace_since_the_last_log_line(tmp_path: Path) -> None:
    logger, lines = logging.getLogger("pekd"), Lines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        metrics = Metrics(tmp_path, is_main=False, resumed_step=100)  # resumed at global step 100
        stats = TrainStats({"ce": 1.5}, 40.0, images=640.0, seconds=5.0)
        # 10 steps in 5 s since the resume: 2 steps/s; 10 epochs of 50 steps, 390 left -> 195 s
        metrics.train(Progress(2, 10, 110), 50, stats, 0.1, epochs=10, max_steps=0)
        # 20 steps in 5 s since the last line: 4 steps/s; 40 left before max_steps=170 -> 10 s
        metrics.train(Progress(2, 30, 130), 50, stats, 0.1, epochs=10, max_steps=170)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert [m.rsplit(", ", 1)[1] for m in lines.messages] == ["eta 3m15s", "eta 10s"]
    assert STEP_LINE.search(lines.messages[0]).groups() == ("50", "110")


def test_a_run_stopped_by_max_steps_logs_an_eta_that_reaches_zero_there(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_python(["-m", "pekd.train", *TINY, "method=ce", "teacher=none", "data.subset=320",
                       "data.val_subset=100", "trainer.epochs=3", "trainer.max_steps=12", "trainer.log_every_steps=4",
                       f"run_dir={run_dir}"])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in (run_dir / "logs" / "rank0.log").read_text().splitlines() if STEP_LINE.search(line)]
    assert [STEP_LINE.search(line).group(2) for line in lines] == ["4", "8", "10", "12"]
    assert all(re.search(r", eta (\d+s|\d+m\d\ds|\d+h\d\dm)$", line) for line in lines), lines
    assert lines[-1].endswith(", eta 0s")  # at max_steps=12, not at the end of epoch 3 (step 30)
