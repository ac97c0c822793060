"""Which runs a folder holds, for `pekd status`: run directories on disk and the runs that launch records name.

A run, a sweep and a study are all folders of run directories (a folder holding config.yaml or results.json); a
sweep submitted to SLURM also has launch records (launchers/submit.py writes <folder>/launches/<job>.json in its
--folder, which is the sweep folder's parent), which name every run of the submission with its job and overrides --
also the runs that never started and so left nothing on disk. Reading stops at a run directory: its checkpoints,
TensorBoard events and W&B folders are never walked, so a sweep of hundreds of runs is found in milliseconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pekd.errors import PekdError

RUN_FILES = ("config.yaml", "results.json")
# Folders beside run directories that hold none: submitit's job logs and the launch records themselves.
NOT_RUNS = {"submitit", "launches"}


@dataclass(frozen=True)
class Launch:
    """A run's newest submission: its job, the point's overrides, and the submit command with its --folder."""

    job_id: str
    overrides: tuple[str, ...]
    command: tuple[str, ...]
    folder: Path  # where the record lives (submit.py's --folder): a resubmission writes its record there too


def run_dirs_on_disk(root: Path) -> set[Path]:
    """Every run directory at or under root, without descending into any (on_existing=overwrite's `.old-` copies are
    superseded runs, left out as pekd.report leaves them out)."""
    found: set[Path] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        if any(e.name in RUN_FILES and e.is_file() for e in entries):
            if ".old-" not in folder.name:
                found.add(Path(folder))
            continue
        stack.extend(Path(e.path) for e in entries
                     if e.is_dir(follow_symlinks=False) and e.name not in NOT_RUNS and not e.name.startswith("."))
    return found


def records_folder(root: Path) -> Path | None:
    """The nearest folder at or above root with launch records (a sweep's records sit in its parent, --folder)."""
    return next((f for f in (root, *root.parents) if (f / "launches").is_dir()), None)


def _job_order(record: dict[str, object], path: Path) -> tuple[str, int, str]:
    """Oldest submission first: by its time, then its job id (SLURM's grow), then the record's name."""
    head = path.stem.split("_")[0]
    return str(record.get("submitted", "")), int(head) if head.isdigit() else 0, path.name


def launches(root: Path) -> dict[Path, Launch]:
    """run directory (at or under root) -> its newest submission, from the launch records; a resubmission (the same
    command again, or --resume) names the job that now owns the run."""
    folder = records_folder(root)
    if folder is None:
        return {}
    records = []
    for path in (folder / "launches").glob("*.json"):
        try:
            record = json.loads(path.read_text())
            runs = [(Path(r["run_dir"]), Launch(str(r["job_id"]), tuple(r.get("overrides", [])),
                                                tuple(record.get("command", [])), folder)) for r in record["runs"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PekdError(f"the launch record {str(path)!r} cannot be read ({type(e).__name__}: {e}); move it out "
                            f"of {str(folder / 'launches')!r} and ask again") from None
        records.append((_job_order(record, path), runs))
    newest: dict[Path, Launch] = {}
    for _, runs in sorted(records, key=lambda r: r[0]):
        newest.update((d, launch) for d, launch in runs if d == root or root in d.parents)
    return newest
