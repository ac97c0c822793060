"""Runs side by side in spawned worker processes that stop together, for the drivers of many runs (pekd.demo,
pekd.study).

A stop signal (SIGTERM from a shell's kill, SLURM or a container runtime; SIGUSR2) must end a driver the way it
ends one run: every run in flight checkpoints at its step boundary and stops, no queued run starts, and the driver
exits with status 3 and says what to rerun. A bare ProcessPoolExecutor does neither: the driver dies at once (the
signal's default action) while its workers go on taking the runs already queued for them with nobody left to
collect the results, and a driver started again finds those runs' leases taken. Here the driver and each worker
only record a signal (no I/O in a handler, as in pekd.engine.preemption); the driver forwards it to the workers (a
plain `kill PID` reaches the driver alone), cancels what has not started, and waits for the runs to stop. A worker
that saw a signal -- between runs, or during one, through the run's handler chaining to the worker's -- starts no
further run.

The workers' runs keep their per-step log lines in their own log files (run_dir/logs/rank0.log): on the driver's
console those of runs side by side would interleave into a thousand lines. The console gets warnings and errors
from the workers (pekd.engine.logs.CONSOLE_LEVEL), and from the driver one line per finished run with the phase's
progress and ETA (Tally).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from types import FrameType
from typing import Any

from pekd.engine.preemption import SIGNALS

STOPPED = 3  # a run's exit status for "stopped at a step boundary, checkpointed: rerun to resume"

_received: list[int] = []  # signals this process received (driver or worker), recorded by the handler alone


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def _worker_init() -> None:
    from pekd.engine.logs import CONSOLE_LEVEL

    os.environ[CONSOLE_LEVEL] = "WARNING"  # the module docstring: the runs' own log files keep their lines
    for s in SIGNALS:
        signal.signal(s, _record)


def _stop_resource_tracker() -> None:
    """Stop and reap the helper process multiprocessing's spawn context starts beside the pool.

    It otherwise ends on its own only once the driver has exited and its pipe closes, so a driver could exit while
    a process it started still runs (a supervisor that waits for the process group, or a test, sees it). The next
    pool starts a new one. `_stop` is CPython's own (3.8+); where it is missing, the helper ends as before.
    """
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()


class Tally:
    """Progress of a phase of runs on the driver's console, one line per finished run:
    `[12/35] fd/seed3: top-1 77.81% (41 s); phase eta 4m10s`.

    The ETA is the phase's elapsed time per unit of work done times the work left, which counts the runs going on
    side by side; `work` weighs each run (its run directory) by what it still has to do -- its optimizer steps, or
    0 for a run that an earlier invocation finished -- so that the study's budgets (500 to 27,000 images) and the
    finished runs a rerun reuses in a second do not make the ETA a guess by run count."""

    def __init__(self, work: dict[Path, float]) -> None:
        self.work = {d.resolve(): w for d, w in work.items()}
        self.left = sum(self.work.values())
        self.done = 0
        self.t0 = time.perf_counter()

    def line(self, run_dir: str | Path, text: str) -> str:
        """The line of the run in run_dir, which has just finished; `text` says what it gave."""
        from pekd.engine.progress import duration_text

        self.done += 1
        self.left -= self.work.get(Path(run_dir).resolve(), 0.0)
        total = sum(self.work.values())
        elapsed = time.perf_counter() - self.t0
        eta = f"; phase eta {duration_text(elapsed * self.left / (total - self.left))}" \
            if self.left > 0 and total - self.left > 0 else ""
        n = len(self.work)
        return f"[{self.done:>{len(str(n))}}/{n}] {text}{eta}"


class NotStarted(Exception):
    """A run a worker refused because a stop signal reached the worker first."""


def _call(fn: Callable[[Any], Any], job: Any) -> Any:
    if _received:
        raise NotStarted
    return fn(job)


class Stopped(SystemExit):
    """The driver's exit after a stop signal: status 3, as for a stopped run."""

    def __init__(self) -> None:
        super().__init__(STOPPED)


class SideBySide:
    """`with SideBySide(n) as pool: for result in pool.map(fn, jobs): ...` -- results as runs finish, in any
    order; after a stop signal, `map` raises Stopped once every run in flight has stopped (`rerun` says what the
    user types to resume, printed before the driver exits)."""

    def __init__(self, processes: int, rerun: str) -> None:
        self.processes, self.rerun = processes, rerun
        self._previous: dict[int, Any] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._forwarded = 0  # how many of the driver's signals the workers have been sent
        self._others: set[int] = set()  # the driver's other child processes (an in-process caller's): not ours

    def __enter__(self) -> SideBySide:
        _received.clear()
        self._forwarded = 0
        self._others = {c.pid for c in multiprocessing.active_children() if c.pid is not None}
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, _record)
        self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_init)
        return self

    def __exit__(self, *exc: object) -> None:
        """No queued run starts; the runs in flight end -- or, when one run's failure ends the driver early, stop at
        their step boundary if a signal comes while the driver waits for them (without the forwarding here, a
        `kill PID` then would wait for them to finish)."""
        assert self._pool is not None
        self._pool.shutdown(wait=False, cancel_futures=True)
        while self._workers():  # active_children() joins every worker process that has exited
            self._forward()
            time.sleep(0.1)
        _stop_resource_tracker()
        for s, h in self._previous.items():
            signal.signal(s, h)

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
        assert self._pool is not None
        pending: set[Future[Any]] = {self._pool.submit(_call, fn, j) for j in jobs}
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            if self._forward():
                for f in pending:
                    f.cancel()
            for f in done:
                if _received:
                    if not f.cancelled():
                        f.exception()  # a run stopped by the signal raises; the stop is what is reported
                else:
                    yield f.result()
        if _received:
            print(f"received {signal.Signals(_received[0]).name}: every run in flight stopped at a step boundary "
                  f"and checkpointed; rerun {self.rerun} to resume", flush=True)
            raise Stopped

    def _forward(self) -> bool:
        """Send the workers the driver's newest signal if it came since the last forwarding; True if one came."""
        if len(_received) <= self._forwarded:
            return False
        for pid in self._workers():
            os.kill(pid, _received[-1])
        self._forwarded = len(_received)
        return True

    def _workers(self) -> list[int]:
        """The pool's live worker processes (multiprocessing's own list, less the children the driver had before)."""
        return [c.pid for c in multiprocessing.active_children() if c.pid is not None and c.pid not in self._others]
