"""Preemption: SIGUSR2 (submitit's signal), SIGTERM or Ctrl-C (SIGINT) asks the trainer to stop at the next step
boundary.

Ctrl-C is a stop like the others -- checkpoint, exit status 3 -- not a KeyboardInterrupt that loses the steps since
the last checkpoint. A second Ctrl-C is a user who will not wait: the process exits at once (status 130) with one
line and no traceback; every file it had written is whole (pekd.engine.files), and the last checkpoint is kept.

Nothing is written or logged from a handler: Python runs it between two bytecodes of the main thread, possibly in
the middle of a write to a log file (a handler that logged would re-enter that file's buffered writer: "Logging error
... reentrant call"); and a handler written in Python nests under a storm of signals into a RecursionError (CI met
it: SIGTERM/SIGUSR2 every microsecond). So the signals are recorded in C (StopSignal). The trainer reports the stop
once, at the step boundary where it acts on it (`describe`); it agrees on the flag across ranks (all-reduce),
checkpoints, and then hands the signal to whichever handler was installed before (submitit's, which requeues the
job). Forked DataLoader workers ignore the signals: only the process that installed the handlers acts.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
_NUMBERS = frozenset(int(s) for s in SIGNALS)
_ACTIVE: tuple[int, int] | None = None  # the pipe of the StopSignal in force, closed in a forked child
_NOW = (b"pekd: second Ctrl-C: exiting now, without a checkpoint of the steps since the last one (kept); run the "
        b"same command again to resume\n")


def exit_now_on_second_interrupt(count: int) -> None:
    """The second Ctrl-C: one line and exit 130 at once. os.write and os._exit only, as a signal handler may run in
    the middle of any write (a buffered writer would be re-entered); the atomic writers leave no half file."""
    if count >= 2:
        os.write(2, _NOW)
        os._exit(130)


def _quiet_ignored_signal_races() -> None:
    """Drop CPython's "Signal N ignored due to race condition" for SIGNALS: under a storm, a signal that arrives
    while signal.signal() swaps in SIG_IGN is caught by the old C handler and then finds no Python handler; CPython
    prints that, with a traceback, as an unraisable error (bpo-43406) -- into the run's log stream, about a signal
    that was to be ignored anyway. Every other unraisable error goes to the hook that was there before."""
    previous = sys.unraisablehook
    if getattr(previous, "pekd_signal_races", False):
        return
    quiet = {f"Signal {int(s)} ignored due to race condition" for s in SIGNALS}

    def hook(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, OSError) and str(unraisable.exc_value) in quiet):
            previous(unraisable)

    hook.pekd_signal_races = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker): drop the parent's wakeup pipe, so that a signal the child gets is
    not written into the parent's record; the child keeps `slice` as its handler, i.e. ignores the signals."""
    global _ACTIVE
    if _ACTIVE is not None:
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:  # forked from a thread that is not the main one: no wakeup fd to drop there
            pass
        for fd in _ACTIVE:
            os.close(fd)
        _ACTIVE = None


os.register_at_fork(after_in_child=_forget_in_child)


class StopSignal:
    """Records SIGUSR2, SIGTERM and Ctrl-C for the trainer, which acts on them at its next step boundary.

    SIGUSR2 and SIGTERM come in storms (srun forwarding, a scheduler's repeated warnings), so no Python code runs for
    them: their handler is the builtin `slice` (called with the signal number and frame, it builds a slice and drops
    it -- C only, no bytecode, so a storm can neither nest handlers into a RecursionError nor re-enter a writer), and
    the record is CPython's wakeup fd: the C-level handler writes each signal's number into a non-blocking pipe, which
    `requested` drains. A full pipe drops further bytes (64 KiB of signals: the count saturates, the stop does not).
    Ctrl-C keeps a Python handler, as its second press must exit at once; that handler runs no call before it has
    recorded, and SIGUSR2/SIGTERM landing inside it run `slice`, not Python. Forked DataLoader workers inherit the
    handlers but not the pipe (closed in the child at fork), so they ignore the signals: only this process acts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._count = 0  # signals received: a storm is reported as one line with its size, not one line each
        self.interrupts = 0  # Ctrl-Cs among them: the second one exits at once
        self._owner = os.getpid()
        self._previous: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._previous_wakeup = -1
        self._previous_active: tuple[int, int] | None = None

    @property
    def requested(self) -> bool:
        self._drain()
        return self.signum is not None

    @property
    def count(self) -> int:
        """How many SIGUSR2/SIGTERM/Ctrl-C this process received so far."""
        self._drain()
        return self._count

    def _drain(self) -> None:
        while self._pipe is not None:
            try:
                got = os.read(self._pipe[0], 4096)
            except BlockingIOError:
                return
            for signum in got:
                if signum in _NUMBERS:
                    self.signum, self._count = signum, self._count + 1

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        # attribute stores first, calls after: a signal handled at a call lands in a recorded state
        self.interrupts += 1
        if self.interrupts >= 2 and os.getpid() == self._owner:
            exit_now_on_second_interrupt(self.interrupts)

    def describe(self) -> str:
        """What this process received, for the one log line about the stop: 'received SIGTERM (x 2,852)', or
        where the stop came from when this rank received nothing (the ranks agree on a stop any one of them got)."""
        self._drain()
        if self.signum is None:
            return "another rank received a stop signal"
        name = "Ctrl-C (SIGINT)" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
        return f"received {name} (x {self._count:,})"

    def __enter__(self) -> StopSignal:
        global _ACTIVE
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pipe = (read, write)
        self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._previous_active, _ACTIVE = _ACTIVE, self._pipe
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._interrupt if s == signal.SIGINT else slice)
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        for s, h in self._previous.items():
            # once a stop is under way, a repeated signal must not kill the checkpointed process (the default
            # action of SIGUSR2/SIGTERM): its exit status 3 is what tells a launcher to resume it; Python's own
            # Ctrl-C handler would raise KeyboardInterrupt with a traceback on the way out
            if self.requested and s == signal.SIGINT and h is signal.default_int_handler:
                signal.signal(s, self._late_interrupt)
                continue
            ignore = self.requested and not callable(h)
            if ignore:
                _quiet_ignored_signal_races()
            signal.signal(s, signal.SIG_IGN if ignore else h)
        self._drain()  # what arrived up to the swap
        signal.set_wakeup_fd(self._previous_wakeup)
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe, _ACTIVE = None, self._previous_active

    def _late_interrupt(self, signum: int, frame: FrameType | None) -> None:
        """Ctrl-C after the stop's checkpoint, while the process winds down: the second one exits at once."""
        if os.getpid() == self._owner:
            self.interrupts += 1
            exit_now_on_second_interrupt(self.interrupts)

    def chain(self) -> None:
        """After the checkpoint: let the previous handler (e.g. submitit's requeue) act on the same signal."""
        prev = self._previous.get(self.signum) if self.signum is not None else None
        if callable(prev) and prev is not signal.default_int_handler and self.signum is not None:
            signal.signal(self.signum, prev)
            prev(self.signum, None)
