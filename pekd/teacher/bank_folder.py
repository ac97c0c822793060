"""Rank 0's first steps of a build: what the bank folder holds, whether it may be built here, and its layout.

Everything that can refuse a build is looked at before anything is written (a refused command leaves nothing
that blocks the corrected one): the folder's records, whether its filesystem is writable and has room for
features.bin, and whether another builder holds it. Only then is the lease taken, the folder looked at again
(another builder may have sealed it meanwhile) and laid out: building.json first, so that whatever fails after it
leaves a build the same command resumes; features.bin preallocated last (pekd.teacher.allocation).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pekd.engine.files import atomic_write_bytes
from pekd.engine.lease import FOLDER as LEASE_FOLDER
from pekd.engine.lease import Lease, live_holder
from pekd.errors import PekdError
from pekd.teacher import allocation, bank, build_lease, chunks
from pekd.teacher.manifest import FORMAT, logits_of
from pekd.teacher.write_errors import write_error

# A partial build may only be resumed by a build that would write the same bytes.
RESUME_CHECKED = [*bank.CHECKED, "logits", "shape", "chunk", "precision.amp", "precision.channels_last"]
# A format-5 build in progress writes format 6's bytes (its rows hold no logits): the same command resumes it.
BUILD_FORMATS_RESUMED = (5, FORMAT)


def inspect(folder: Path, spec: dict[str, Any]) -> str:
    """Read-only: 'sealed' (nothing to do), 'resume' (a matching partial build) or 'new' (nothing built yet)."""
    where = f"feature bank folder {str(folder)!r}"
    if (folder / bank.MANIFEST).is_file():
        manifest = bank.read_record(folder / bank.MANIFEST, sealed=True)
        diff = bank.bank_difference(manifest, spec)
        if diff:
            raise PekdError(f"{where} already holds a finished bank of another run ({diff}); choose another "
                            "teacher.bank, or move the folder aside to rebuild it")
        if spec["logits"] and not logits_of(manifest):
            raise PekdError(f"{where} already holds a finished bank of this run's features without the teacher's "
                            "logits, which this run asks for (bank.logits=true, or a KD run); build the bank with "
                            "logits into another teacher.bank, or move the folder aside to rebuild it")
        return "sealed"
    if (folder / bank.BUILDING).is_file():
        building = bank.read_record(folder / bank.BUILDING, sealed=False)
        if building["format"] not in BUILD_FORMATS_RESUMED:
            raise PekdError(f"{where} holds an unfinished build of an older pekd (format {building['format']}, "
                            f"without content checksums); move the folder aside or delete it, and build again")
        building = {"logits": 0, **building, "format": FORMAT}
        diff = bank.first_difference(building, spec, RESUME_CHECKED)
        if diff:
            raise PekdError(f"{where} holds an unfinished build of another config ({diff}); resume it with its "
                            "own settings, choose another teacher.bank, or move the folder aside")
        if chunks.any_finished(folder):
            bank.open_features(folder, spec, "r")  # finished rows in a truncated file: refused before any write
        return "resume"
    foreign = folder.exists() and any(p.name != LEASE_FOLDER for p in folder.iterdir())
    if foreign and live_holder(folder) is None:  # (a live builder may be laying the folder out right now)
        raise PekdError(f"{where} is not empty and holds no bank; choose an empty or new folder")
    return "new"


def check_writable(folder: Path) -> None:
    """Refuse a folder on a read-only filesystem, or one this user may not write, before any write."""
    target = allocation.existing_ancestor(folder)
    if os.statvfs(target).f_flag & os.ST_RDONLY:
        raise PekdError(f"cannot build feature bank {str(folder)!r}: {str(target)!r} is on a read-only filesystem; "
                        "choose a teacher.bank on a writable filesystem (a sealed bank can be read from a "
                        "read-only one)")
    if not os.access(target, os.W_OK | os.X_OK):
        raise PekdError(f"cannot build feature bank {str(folder)!r}: {str(target)!r} is not writable by this user; "
                        "make it writable, or choose another teacher.bank")


def lay_out(folder: Path, spec: dict[str, Any], state: str, check: Lease) -> None:
    """Under the lease: building.json (a new build), the chunks folder and the whole of features.bin."""
    if state == "new":
        atomic_write_bytes(folder / bank.BUILDING, (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode(),
                           check.check)
    try:
        (folder / bank.CHUNKS).mkdir(exist_ok=True)
    except OSError as e:
        raise write_error(folder / bank.CHUNKS, e, "create") from None
    allocation.allocate(folder / bank.FEATURES, allocation.bank_bytes(spec), fresh=not chunks.any_finished(folder))


def claim(folder: Path, spec: dict[str, Any], stale_s: float, wait_s: float) -> tuple[str, Lease | None]:
    """Rank 0: the folder's state and, unless it is sealed, the build lease with the folder laid out."""
    if inspect(folder, spec) == "sealed":
        return "sealed", None
    check_writable(folder)
    build_lease.refuse_if_busy(folder, wait_s)
    allocation.check_room(folder, spec)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e, "create") from None
    lease = build_lease.take(folder, stale_s, wait_s)
    try:
        state = inspect(folder, spec)  # another builder may have sealed or started it while this one looked
        if state != "sealed":
            allocation.check_room(folder, spec)
            lay_out(folder, spec, state, lease)
    except BaseException:
        lease.release()
        raise
    if state == "sealed":
        lease.release()
        return state, None
    return state, lease
