"""Side-by-side timing: candidates are measured interleaved, round after round, in one process, so a machine
that slows down or speeds up mid-run affects every candidate alike; ratios use the median of the rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(candidates: dict[str, Callable[[], None]], rounds: int = 7, reps: int = 5,
                warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each candidate."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in samples.items()}


def table(times: dict[str, float], baseline: str, unit_items: int = 0, item: str = "images/s") -> str:
    head = f"| candidate | ms / step | ratio to {baseline} |" + (f" {item} |" if unit_items else "")
    lines = [head, "|---|---:|---:|" + ("---:|" if unit_items else "")]
    for k, t in times.items():
        row = f"| {k} | {1000 * t:.1f} | {t / times[baseline]:.3f} |"
        lines.append(row + (f" {unit_items / t:.0f} |" if unit_items else ""))
    return "\n".join(lines)
