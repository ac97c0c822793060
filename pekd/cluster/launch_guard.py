"""What launchers/submit.py must not queue again: a run whose lease is live, or whose job is still queued or running.

A resubmitted sweep already skips its completed runs; without this it queued a second job for every run still in
the queue or training, and both jobs then wrote into one run directory. Two sources say a run is taken:

- its lease (pekd.engine.lease): a live one means a process is training it right now, wherever it was started;
- the launch records (<folder>/launches/<job>.json, written at every submission) name the job of each run
  directory, and squeue says whether that job is still pending or running -- a queued job has no lease yet.

Each refused run is named with its job and the way out; the rest of the sweep is submitted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pekd.engine.lease import current_holder
from pekd.errors import PekdError

ACTIVE_STATES = "pending,running,configuring,completing,suspended,requeued,requeue_hold,requeue_fed,resizing"


@dataclass(frozen=True)
class Busy:
    run_dir: Path
    why: str


def active_jobs() -> dict[str, str]:
    """Every job that squeue lists as not finished, one entry per array task ('123_4' -> 'PENDING'); empty without
    SLURM. A controller that does not answer is an error: submitting blind could queue duplicates."""
    if shutil.which("squeue") is None:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-t", ACTIVE_STATES, "-o", "%i %T"], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise PekdError(f"squeue failed ({' '.join(out.stderr.split())}); cannot tell which runs are still queued, "
                        "so nothing was submitted; try again when the controller answers")
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())


def recorded_jobs(folder: Path) -> dict[Path, list[str]]:
    """run directory -> the job ids of its submissions, oldest first, from the launch records under `folder`."""
    jobs: dict[Path, list[str]] = {}
    for record in sorted((folder / "launches").glob("*.json")):
        try:
            runs = json.loads(record.read_text())["runs"]
            for run in runs:
                jobs.setdefault(Path(run["run_dir"]).resolve(), []).append(str(run["job_id"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PekdError(f"the launch record {str(record)!r} cannot be read ({e}); move it out of "
                            f"{str(folder / 'launches')!r} and submit again") from None
    return jobs


def busy_runs(run_dirs: list[Path], folder: Path, queue: bool = True) -> list[Busy]:
    """The run directories among `run_dirs` that are leased, or (queue: asking squeue) queued now, with the reason."""
    active = active_jobs() if queue else {}
    recorded = recorded_jobs(folder.resolve()) if active else {}
    found = []
    for run_dir in run_dirs:
        holder = current_holder(run_dir)
        if holder is not None and holder.why_stale() is None:
            found.append(Busy(run_dir, f"its lease is live ({holder.describe()})"))
            continue
        queued = [(job, active[job]) for job in recorded.get(run_dir.resolve(), []) if job in active]
        if queued:
            job, state = queued[-1]
            found.append(Busy(run_dir, f"job {job} is {state.lower()}"))
    return found


def drop_busy(runs: list[Any], folder: Path, queue: bool = True) -> list[Any]:
    """`runs` (objects with a .run_dir) without the busy ones, each refused on one line naming its job."""
    busy = {b.run_dir: b.why for b in busy_runs([r.run_dir for r in runs], folder, queue)}
    for run_dir, why in busy.items():
        print(f"not submitted, already taken: {run_dir}: {why}; scancel that job to replace it, or wait for it")
    return [r for r in runs if r.run_dir not in busy]
