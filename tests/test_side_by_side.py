"""pekd.science.side_by_side: a stop signal to the driver of many runs stops them together -- the runs in flight finish
their step, queued runs never start, the workers exit, and the driver raises Stopped (exit status 3)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pekd.science import side_by_side
from pekd.science.side_by_side import STOPPED, SideBySide, Stopped


def slow_job(marker: str) -> str:
    """A job that leaves a trace when it starts and runs 0.5 s, or up to 60 s until its worker sees a stop signal
    (as a run stops at its next step boundary): which jobs ran is on disk."""
    Path(marker).write_text("started")
    end = time.monotonic() + (60 if Path(marker).name == "job0" else 0.5)
    while time.monotonic() < end and not side_by_side._received:
        time.sleep(0.02)
    return marker


def test_results_of_every_job_without_a_signal(tmp_path: Path) -> None:
    jobs = [str(tmp_path / f"short{i}") for i in range(5)]
    with SideBySide(2, "again") as pool:
        assert sorted(pool.map(slow_job, jobs)) == jobs


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_a_signal_to_the_driver_alone_stops_every_worker_and_starts_no_queued_job(signum: int,
                                                                                    tmp_path: Path) -> None:
    jobs = [str(tmp_path / f"job{i}") for i in range(40)]
    before = signal.getsignal(signum)
    t0 = time.monotonic()
    with pytest.raises(Stopped) as stopped, SideBySide(2, "again") as pool:
        results = pool.map(slow_job, jobs)
        next(results)  # job0 runs on, as a long run does, until the stop reaches its worker
        os.kill(os.getpid(), signum)  # the driver only, as `kill PID` does: it must reach the workers itself
        list(results)
    assert stopped.value.code == STOPPED
    started = sorted(tmp_path.glob("job*"))
    assert 1 <= len(started) <= 6, f"{len(started)} of 40 jobs started after the stop"  # the bound: 2 per worker
    assert time.monotonic() - t0 < 15, "the run in flight did not see the stop"
    assert not multiprocessing.active_children(), "the workers outlived the driver's stop"
    assert signal.getsignal(signum) == before, "the driver's own handling must end with the pool"


def failing_job(marker: str) -> str:
    """Fails once job0 has started: a run that ends in an error (another process holds its run directory, say)."""
    while not (Path(marker).parent / "job0").exists():
        time.sleep(0.02)
    raise RuntimeError(f"{marker} failed")


def test_a_signal_while_a_failed_driver_waits_for_its_runs_in_flight_stops_them(tmp_path: Path) -> None:
    """One run's error ends the driver's loop; the driver then waits for the runs still in flight. A `kill PID`
    during that wait must still reach them: they stop at their step boundary instead of running to the end."""
    jobs = [str(tmp_path / "job0"), str(tmp_path / "fail")]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="fail failed"), SideBySide(2, "again") as pool:
        try:
            list(pool.map(job_by_name, jobs))
        finally:  # the error is on its way out; the kill lands while __exit__ waits for job0
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert time.monotonic() - t0 < 20, "the run in flight ran on: the signal was not forwarded during the wait"
    assert not multiprocessing.active_children(), "the workers outlived the driver"


def job_by_name(marker: str) -> str:
    """job0 runs until its worker sees a stop signal; "fail" fails once job0 has started."""
    return failing_job(marker) if Path(marker).name == "fail" else slow_job(marker)
