"""Preemption: SIGUSR2 (submitit's signal), SIGTERM or Ctrl-C (SIGINT) asks the trainer to stop at the next step
boundary.

Ctrl-C is a stop like the others -- checkpoint, exit status 3 -- not a KeyboardInterrupt that loses the steps since
the last checkpoint. A second Ctrl-C is a user who will not wait: the process exits at once (status 130) with one
line and no traceback; every file it had written is whole (pekd.engine.files), and the last checkpoint is kept.

The handler only records (flag, signal, count): Python runs it between two bytecodes of the main thread, possibly
in the middle of a write to a log file, so a handler that logged would re-enter that file's buffered writer ("Logging
error ... reentrant call"), and a storm of signals (srun forwarding, Ctrl-C pressed again and again) would nest
handlers into a RecursionError. The trainer reports the stop once, at the step boundary where it acts on it
(`describe`); it agrees on the flag across ranks (all-reduce), checkpoints, and then hands the signal to whichever
handler was installed before (submitit's, which requeues the job). Forked DataLoader workers inherit the handler but
ignore the signal: only the process that installed it acts.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
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


class StopSignal:
    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.count = 0  # signals received: a storm is reported as one line with its size, not one line each
        self.interrupts = 0  # Ctrl-Cs among them: the second one exits at once
        self._owner = os.getpid()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Record only: no I/O, no logging, no locks (see the module docstring), and as few bytecodes as possible.
        if os.getpid() == self._owner:
            if signum == signal.SIGINT:
                self.interrupts += 1
                exit_now_on_second_interrupt(self.interrupts)
            self.requested, self.signum, self.count = True, signum, self.count + 1

    def describe(self) -> str:
        """What this process received, for the one log line about the stop: 'received SIGTERM (x 2,852)', or
        where the stop came from when this rank received nothing (the ranks agree on a stop any one of them got)."""
        if self.signum is None:
            return "another rank received a stop signal"
        name = "Ctrl-C (SIGINT)" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
        return f"received {name} (x {self.count:,})"

    def __enter__(self) -> StopSignal:
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
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
