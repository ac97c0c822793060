"""What the GPU check reads back from a pekd.train run's metrics.csv: its pace, its losses, and the images several
runs trained while all of them were running at once."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path


def rows(run_dir: Path, tag: str) -> list[tuple[int, float, float]]:
    """(step, value, wall time) of every row of `tag`, in step order."""
    with (run_dir / "metrics.csv").open() as f:
        found = [(int(r["step"]), float(r["value"]), float(r["time"])) for r in csv.DictReader(f) if r["tag"] == tag]
    return sorted(found)


def images_per_s(run_dir: Path) -> float:
    """The median of the run's logged train/images_per_s, its first log window (start-up, compilation and graph
    recording) left out when it has others."""
    paces = [v for _, v, _ in rows(run_dir, "train/images_per_s")]
    return statistics.median(paces[1:] or paces)


def losses(run_dir: Path) -> list[float]:
    """The train/loss of each log window, in order."""
    return [v for _, v, _ in rows(run_dir, "train/loss")]


def together(run_dirs: list[Path], batch: int) -> tuple[float, float]:
    """(images/s of all the runs together, seconds) over the window in which every run had logged and none had
    logged its last: each run's pace between its first and last log line inside that window, summed."""
    logs = [[(t, step) for step, _, t in rows(d, "train/images_per_s")] for d in run_dirs]
    start, end = max(log[0][0] for log in logs), min(log[-1][0] for log in logs)
    total = 0.0
    for log in logs:
        inside = [(t, step) for t, step in log if start <= t <= end]
        if len(inside) < 2:
            raise AssertionError(f"the {len(run_dirs)} runs ran at the same time for {max(end - start, 0):.1f} s, "
                                 "too short to time: raise the steps per run")
        (t0, s0), (t1, s1) = inside[0], inside[-1]
        total += (s1 - s0) * batch / (t1 - t0)
    return total, end - start
