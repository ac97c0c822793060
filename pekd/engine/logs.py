"""Per-rank logs: every rank writes run_dir/logs/rank<r>.log (its log records) and rank<r>.out (a copy of its
stdout and stderr, warnings and tracebacks included); only rank 0 also talks to the console.

A log file that can no longer be written (a full disk, a read-only remount) is given up, and the console keeps
everything: otherwise the one `error:` line about the full disk would itself fail to print, with a traceback, and
logging would add a "--- Logging error ---" page for every record.

A driver of many runs (pekd.demo, pekd.study, through pekd.science.side_by_side) sets PEKD_CONSOLE_LEVEL=WARNING in its
workers: their runs' per-step lines then stay in their own log files, where they are complete, instead of
interleaving on the driver's console; warnings and errors still reach it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import IO

CONSOLE_LEVEL = "PEKD_CONSOLE_LEVEL"  # the lowest level of record rank 0 prints on the console (default INFO)


class Tee:
    """A text stream that writes to the console stream (or nowhere) and to a per-rank file."""

    def __init__(self, console: IO[str] | None, file: IO[str]) -> None:
        self.console, self.file = console, file
        self.broken = False  # the file failed once (module docstring): the console alone from then on

    def write(self, text: str) -> int:
        if self.console is not None:
            self.console.write(text)
        if not self.broken:
            try:
                self.file.write(text)
            except OSError:
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if self.console is not None:
            self.console.flush()
        if not self.broken:
            try:
                self.file.flush()
            except OSError:
                self.broken = True

    def isatty(self) -> bool:
        return self.console is not None and self.console.isatty()

    def fileno(self) -> int:
        return (self.console or self.file).fileno()


class _FileHandler(logging.FileHandler):
    """A log file whose failed writes are dropped without logging's traceback page (module docstring)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 -- logging's name
        pass


def setup_logging(run_dir: Path, rank: int) -> None:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"rank{rank}.out", "a", buffering=1)  # noqa: SIM115 -- lives as long as the process
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        console = current.console if isinstance(current, Tee) else current
        # Other ranks keep their console too: under torchrun/SLURM their streams are already separate files.
        setattr(sys, name, Tee(console, out))
    logger = logging.getLogger("pekd")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s")
    fh = _FileHandler(logs / f"rank{rank}.log")
    fh.setFormatter(fmt)
    logger.addHandler(fh)
    if rank == 0:
        sh = logging.StreamHandler(sys.__stderr__)
        sh.setFormatter(logging.Formatter("%(message)s"))
        sh.setLevel(os.environ.get(CONSOLE_LEVEL, "INFO"))
        logger.addHandler(sh)
