"""Per-rank log files (every rank writes run_dir/logs/rank<r>.log); only rank 0 also talks to the console."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(run_dir: Path, rank: int) -> None:
    logger = logging.getLogger("pekd")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s")
    fh = logging.FileHandler(run_dir / "logs" / f"rank{rank}.log")
    fh.setFormatter(fmt)
    logger.addHandler(fh)
    if rank == 0:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(sh)
    logging.getLogger("pekd.engine.checkpoint").parent = logger
