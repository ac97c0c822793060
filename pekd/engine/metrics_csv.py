"""metrics.csv beside TensorBoard's events: every scalar a run logs, one row each, for pandas or a spreadsheet.

Long format (step, tag, value, time) so that a term added later or an evaluation every few epochs needs no new
columns: `pd.read_csv(run_dir / "metrics.csv").pivot_table(index="step", columns="tag", values="value")`.

Each (step, tag) appears once whatever the crash point: a resumed run keeps the rows its checkpoint had seen and
drops the rest -- rows past the checkpoint's step (that step is trained again), and, when the checkpoint says its
epoch's evaluation is pending, that evaluation's rows at the checkpoint's step (it runs again). The rows kept at
the checkpoint's own step are what pekd.engine.metrics replays into TensorBoard, which is purged from that step.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from pekd.engine.files import atomic_write_bytes, write_error

HEADER = ["step", "tag", "value", "time"]
log = logging.getLogger("pekd")


def readable(row: list[str]) -> bool:
    """A row as pekd writes it: four fields, an integer step, a number, nothing a damaged byte turned into."""
    if len(row) != len(HEADER) or not row[0].isdigit() or any("\ufffd" in field for field in row):
        return False
    try:
        float(row[2])
    except ValueError:
        return False
    return True


class MetricsCSV:
    """Rank 0's appender; rows reach the file line by line (a killed run keeps what it logged)."""

    def __init__(self, path: Path, resumed_step: int, evaluation_pending: bool = False) -> None:
        self.path = path
        self.at_resume: dict[str, float] = {}  # the kept rows of the resumed step: tag -> value
        self.found = path.is_file()  # False for a new run, or one whose metrics.csv was deleted
        self.damaged = 0  # unreadable rows dropped at the resume: the resumed step's may be among them
        try:
            if path.is_file():
                self._keep_through(resumed_step, evaluation_pending)
            new = not path.is_file()
            self.file = open(path, "a", newline="", buffering=1)  # noqa: SIM115 -- closed by close()
        except OSError as e:
            raise write_error(path, e) from None
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(HEADER)

    def _keep_through(self, step: int, evaluation_pending: bool) -> None:
        # a damaged file (bytes flipped or zeroed on disk) is read, not raised on: its unreadable rows are dropped
        with open(self.path, newline="", errors="replace") as f:
            rows = list(csv.reader(line.replace("\0", "\ufffd") for line in f))

        def kept_row(r: list[str]) -> bool:
            if not readable(r):
                return False
            at = int(r[0])
            return at < step or (at == step and not (evaluation_pending and r[1].startswith("val/")))

        kept = [HEADER] + [r for r in rows[1:] if kept_row(r)]
        self.damaged = sum(not readable(r) for r in rows[1:])
        if self.damaged:
            log.warning("%s: %d damaged row(s) dropped (TensorBoard's events keep every scalar)", self.path,
                        self.damaged)
        self.at_resume = {r[1]: float(r[2]) for r in kept[1:] if int(r[0]) == step}
        if len(kept) != len(rows):
            lines = "".join(",".join(r) + "\r\n" for r in kept)
            atomic_write_bytes(self.path, lines.encode())

    def add(self, step: int, values: dict[str, float]) -> None:
        now = f"{time.time():.3f}"
        try:
            for tag, value in values.items():
                self.writer.writerow([step, tag, repr(float(value)), now])
        except OSError as e:
            raise write_error(self.path, e) from None

    def close(self) -> None:
        self.file.close()
