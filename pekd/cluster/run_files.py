"""What a run directory says about where its run stands, read cheaply for `pekd status`.

Only small files and the tails of growing ones: results.json (status, accuracies, the error of a job that failed for
good), config.yaml (epochs, max_steps), the lease (who holds the run, its heartbeat, which SLURM start it is), the
last 8 KiB of metrics.csv (steps, their times, images/s) and 32 KiB of the rank-0 logs (steps per epoch, error lines).
Checkpoints are never opened: unpickling one costs more than reading a whole sweep's worth of these.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pekd.engine.lease import Holder, current_holder
from pekd.errors import PekdError

TAIL_BYTES = 32 * 1024  # a log's tail: a few hundred lines, a traceback included
METRICS_TAIL_BYTES = 8 * 1024  # ~130 rows: the newest logged steps, enough to time the current start
# pekd.engine.metrics' training log line: "epoch 3 step 12/44 (global 144): loss ..."
STEP_LINE = re.compile(r"epoch \d+ step \d+/(\d+) \(global (\d+)\)")
# a logging record at ERROR in rank 0's log: the trainer's, or the batch script's verdict on a crashed start
ERROR_RECORD = re.compile(r"^\S+ \S+ \[(?:rank \d+|batch script)\] ERROR (.*)$", re.M)
TRAINER_SECTION = re.compile(r"^trainer:\n((?:[ -].*\n?)*)", re.M)
TRAINER_INT = re.compile(r"^  (epochs|max_steps): (\d+)$", re.M)


@dataclass
class RunFiles:
    """The facts one run directory holds (None: that file does not say, or is not there yet)."""

    run_dir: Path
    has_config: bool = False
    results: dict[str, Any] | None = None
    epochs: int | None = None
    max_steps: int = 0
    step: int = 0
    steps_per_epoch: int | None = None
    images_per_s: float | None = None
    train_times: list[tuple[int, float]] = field(default_factory=list)  # (global step, time) of logged steps
    holder: Holder | None = None
    lease_problem: str | None = None
    error: str | None = None  # the newest error line in the logs

    @property
    def status(self) -> str | None:
        """results.json's status (running | preempted | stopped | completed | failed), None before the first one."""
        return None if self.results is None else str(self.results.get("status"))

    def top1(self, which: str) -> float | None:
        value = (self.results or {}).get(f"{which}_top1")
        return value if isinstance(value, int | float) and math.isfinite(value) else None


def tail_text(path: Path, size: int = TAIL_BYTES) -> str:
    """The whole lines among the last `size` bytes of a file ('' if it is not there)."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, 2)
            f.seek(max(0, end - size))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return text.partition("\n")[2] if end > size else text  # the first line of a partial read is cut


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _config(files: RunFiles) -> None:
    """Epochs and the step cap from config.yaml. The file is OmegaConf's dump of the resolved config (two-space
    indent, one `key: value` a line), so two lines are found by pattern: parsing the whole YAML of hundreds of runs
    took seconds."""
    try:
        text = (files.run_dir / "config.yaml").read_text()
    except OSError:
        return
    files.has_config = True
    section = TRAINER_SECTION.search(text)
    values = dict(TRAINER_INT.findall(section.group(1))) if section else {}
    files.epochs = int(values["epochs"]) if "epochs" in values else None
    files.max_steps = int(values.get("max_steps", 0))


def _metrics(files: RunFiles) -> None:
    """Newest step, images/s and the times of logged steps from metrics.csv's tail (step,tag,value,time rows; only
    the rows of two tags are split: splitting every row was most of the time a sweep's status took)."""
    text = tail_text(files.run_dir / "metrics.csv", METRICS_TAIL_BYTES)
    for line in text.splitlines():
        if ",train/loss," in line or ",train/images_per_s," in line:
            parts = line.split(",")
            try:
                if parts[1] == "train/loss":
                    files.train_times.append((int(parts[0]), float(parts[3])))
                else:
                    files.images_per_s = float(parts[2])
            except (ValueError, IndexError):
                continue
    newest = text.rstrip().rpartition("\n")[2].partition(",")[0]
    if newest.isdigit():
        files.step = max(files.step, int(newest))


def printed_errors(lines: list[str]) -> list[str]:
    """The error lines a process printed: pekd's `error:` lines and the exception line that ends each traceback."""
    found, in_traceback = [], False
    for line in lines:
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif line.startswith("error: "):
            found.append(line[len("error: "):])
        elif in_traceback and line.strip() and not line.startswith((" ", "\t")):
            found.append(line)
            in_traceback = False
    return found


def _logs(files: RunFiles) -> None:
    """Steps per epoch from the newest training log line; the newest error line: an ERROR record of rank 0's log
    (SLURM: the failed rank's error, the batch script's verdict), else an `error:` line or a traceback's last line
    in its captured output (a local run's PekdError or crash)."""
    text = tail_text(files.run_dir / "logs" / "rank0.log")
    if steps := STEP_LINE.findall(text):
        files.steps_per_epoch = int(steps[-1][0])
        files.step = max(files.step, int(steps[-1][1]))
    errors = ERROR_RECORD.findall(text) if " ERROR " in text else []
    printed = printed_errors(tail_text(files.run_dir / "logs" / "rank0.out").splitlines())
    newest = errors or printed
    files.error = newest[-1] if newest else None


def read_run_files(run_dir: Path) -> RunFiles:
    files = RunFiles(run_dir)
    if not run_dir.is_dir():
        return files
    files.results = _json(run_dir / "results.json")
    _config(files)
    if files.results is not None:
        files.step = int(files.results.get("global_step") or 0)
        if files.epochs is None and isinstance(files.results.get("epochs"), int):
            files.epochs = files.results["epochs"]
    _metrics(files)
    if files.status != "completed":  # a finished run's logs have nothing its results.json does not say
        _logs(files)
    if files.steps_per_epoch is None and files.results and files.status in ("running", "completed"):
        # written at an epoch's end: the global step is a whole number of epochs
        epoch, step = files.results.get("epoch"), files.results.get("global_step")
        if isinstance(epoch, int) and isinstance(step, int) and epoch > 0 and step % epoch == 0:
            files.steps_per_epoch = step // epoch
    try:
        files.holder = current_holder(run_dir)
    except (PekdError, OSError) as e:
        files.lease_problem = str(e)
    return files


def job_log_error(folder: Path, job_id: str) -> str | None:
    """The newest error line of a SLURM job's first task in submitit's log (<folder>/submitit/<job>/), for a job
    that failed before its run wrote anything (a --setup line, an import, a missing module)."""
    found = printed_errors(tail_text(folder / "submitit" / job_id / f"{job_id}_0_log.err").splitlines())
    return found[-1] if found else None
