"""Preemption: SIGUSR2 (submitit's signal) or SIGTERM asks the trainer to stop at the next step boundary.

The handler only sets a flag; the trainer agrees on it across ranks (all-reduce), checkpoints, and then hands the
signal to whichever handler was installed before (submitit's, which requeues the job). Forked DataLoader workers
inherit the handler but ignore the signal: only the process that installed it acts.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

log = logging.getLogger("pekd")
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopSignal:
    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._owner = os.getpid()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            return
        self.requested, self.signum = True, signum
        log.info("received %s: stopping at the next step boundary", signal.Signals(signum).name)

    def __enter__(self) -> StopSignal:
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            # once a stop is under way, a repeated signal must not kill the checkpointed process (the default
            # action of SIGUSR2/SIGTERM): its exit status 3 is what tells a launcher to resume it
            signal.signal(s, signal.SIG_IGN if self.requested and not callable(h) else h)

    def chain(self) -> None:
        """After the checkpoint: let the previous handler (e.g. submitit's requeue) act on the same signal."""
        prev = self._previous.get(self.signum) if self.signum is not None else None
        if callable(prev) and self.signum is not None:
            signal.signal(self.signum, prev)
            prev(self.signum, None)
