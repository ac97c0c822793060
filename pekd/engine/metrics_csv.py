"""metrics.csv beside TensorBoard's events: every scalar a run logs, one row each, for pandas or a spreadsheet.

Long format (step, tag, value, time) so that a term added later or an evaluation every few epochs needs no new
columns: `pd.read_csv(run_dir / "metrics.csv").pivot_table(index="step", columns="tag", values="value")`. A
resumed run drops the rows past its checkpoint, as TensorBoard's purge_step drops those events, so a step that is
trained again after a preemption appears once.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from pekd.engine.checkpoint import atomic_write_bytes

HEADER = ["step", "tag", "value", "time"]


class MetricsCSV:
    """Rank 0's appender; rows reach the file line by line (a killed run keeps what it logged)."""

    def __init__(self, path: Path, resumed_step: int) -> None:
        self.path = path
        if path.is_file():
            self._keep_through(resumed_step)
        new = not path.is_file()
        self.file = open(path, "a", newline="", buffering=1)  # noqa: SIM115 -- closed by close()
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(HEADER)

    def _keep_through(self, step: int) -> None:
        with open(self.path, newline="") as f:
            rows = [r for r in csv.reader(f)]
        kept = [HEADER] + [r for r in rows[1:] if len(r) == len(HEADER) and r[0].isdigit() and int(r[0]) <= step]
        if len(kept) != len(rows):
            lines = "".join(",".join(r) + "\r\n" for r in kept)
            atomic_write_bytes(self.path, lines.encode())

    def add(self, step: int, values: dict[str, float]) -> None:
        now = f"{time.time():.3f}"
        for tag, value in values.items():
            self.writer.writerow([step, tag, repr(float(value)), now])

    def close(self) -> None:
        self.file.close()
