"""An online teacher must stay the same file for the whole run.

A run resumed after a requeue rebuilds its online teacher from teacher.weights. The config records the path, not
the bytes, so a file overwritten in between (a re-trained teacher saved under the same name) would silently change
the distillation target mid-run. The first start records the file's sha256 in run_dir/teacher.json; every later
start compares and refuses a different file. (A feature bank already ties itself to its teacher's sha256.)
"""

from __future__ import annotations

import json
from pathlib import Path

from pekd.engine.files import atomic_write_bytes
from pekd.errors import PekdError
from pekd.teacher.bank import weights_sha256

RECORD = "teacher.json"


def check_teacher_unchanged(run_dir: Path, weights: str) -> None:
    """Record the teacher's sha256 on a run's first start; on later starts raise PekdError if the file changed.

    Rank 0 only, after the run directory is prepared (so run_dir holds this run) and before training starts (so a
    refused start changes nothing in it).
    """
    digest = weights_sha256(weights)
    record = run_dir / RECORD
    if not record.is_file():
        atomic_write_bytes(record, (json.dumps({"weights": str(weights), "sha256": digest}, indent=2) + "\n").encode())
        return
    try:
        recorded = json.loads(record.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PekdError(f"{str(record)!r} is unreadable ({type(e).__name__}); it records which teacher this run "
                        "started with: restore it, or start a new run (another run_dir)") from None
    if recorded != digest:
        raise PekdError(f"teacher.weights {weights} changed since this run started (sha256 {recorded[:12]}... -> "
                        f"{digest[:12]}...); restore the original file, or start a new run (another run_dir)")
