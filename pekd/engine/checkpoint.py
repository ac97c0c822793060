"""Atomic, verifiable checkpoints.

A checkpoint file is `MAGIC + sha256(payload) + payload`, where payload is torch.save's bytes. It is written to a
temp file in the same folder, fsynced, then os.replace'd over the final name and the folder fsynced, so a crash
(even kill -9) leaves either the old file set or the new one, never a half file under a real name. Loading
verifies the digest before unpickling (with weights_only=True), so a truncated or corrupted file is detected,
reported and skipped in favour of the next newest. A write that fails (disk full, file size limit, read-only
folder) removes its temp file and raises a one-line PekdError: the previous files stay as they were.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pekd.errors import PekdError

MAGIC = b"PEKDCKPT1\n"
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
log = logging.getLogger(__name__)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What to do about a failed write, by errno: the fixes a user can act on.
# (The same writer makes feature banks, hence "or bank folder".)
_WRITE_FIXES = {
    errno.ENOSPC: "free space on that filesystem, or move run_dir (or the bank folder) to one with room",
    errno.EDQUOT: "free space within your quota, or move run_dir (or the bank folder) to a filesystem with room",
    errno.EFBIG: "raise the file size limit (ulimit -f), or move run_dir (or the bank folder) to a filesystem "
                 "that allows larger files",
    errno.EROFS: "move run_dir (or the bank folder) to a writable filesystem",
    errno.EACCES: "make the folder writable, or choose another run_dir (or bank folder)",
}


def _write_error(path: Path, e: OSError) -> PekdError:
    """The one-line error for a file pekd could not write: which file, why (the OS's words) and the fix."""
    why = (e.strerror or str(e)).lower()
    fix = _WRITE_FIXES.get(e.errno or 0, "check the filesystem holding that folder")
    return PekdError(f"cannot write {str(path)!r}: {why}; {fix}")


def atomic_write_bytes(path: Path, data: bytes, check: Callable[[], None] | None = None) -> None:
    """Write `data` to `path` all or nothing (temp file, fsync, os.replace, fsync of the folder).

    On any failure -- Ctrl-C mid-write included -- the temp file is removed, so a full disk is not made fuller by
    the attempt and the folder holds no debris; an OSError becomes a PekdError naming the file and the fix.
    `check` runs right before the replace (pekd.engine.lease: a writer that lost its run's lease writes nothing).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check()
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise
    _fsync_dir(path.parent)


def save(state: dict[str, Any], path: Path, check: Callable[[], None] | None = None) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload, check)


def load(path: Path) -> dict[str, Any]:
    """Load and verify; raises PekdError naming the file when it is truncated, corrupt or not ours."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PekdError(f"cannot read checkpoint {str(path)!r}: {e}") from None
    head = len(MAGIC) + 32
    if len(raw) < head or not raw.startswith(MAGIC):
        raise PekdError(f"{str(path)!r} is not a pekd checkpoint (bad header); it may be truncated")
    digest, payload = raw[len(MAGIC):head], raw[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise PekdError(f"checkpoint {str(path)!r} fails its checksum (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def ckpt_path(folder: Path, global_step: int) -> Path:
    return folder / f"ckpt-{global_step:09d}.pt"


def checkpoint_step(path: Path) -> int:
    """The global step in a checkpoint's file name."""
    found = _NAME.match(path.name)
    if not found:
        raise ValueError(f"{path.name!r} is not a checkpoint file name")
    return int(found.group(1))


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints newest first (by global step)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=checkpoint_step, reverse=True)


def newest_valid(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies; corrupt ones are reported and skipped, never deleted.

    Each skipped file gets a warning naming it, and the one used is named with them: a run that resumes from
    an older checkpoint than the newest must say so, or the repeated steps look like a bug.
    """
    skipped: list[Path] = []
    for p in list_checkpoints(folder):
        try:
            state = load(p)
        except PekdError as e:
            log.warning("skipping a checkpoint that does not verify: %s", e)
            skipped.append(p)
            continue
        if skipped:
            log.warning("using %s, the newest checkpoint that verifies, instead of %s", p,
                        ", ".join(str(s) for s in skipped))
        return p, state
    if skipped:
        log.warning("none of the %d checkpoints in %s verifies", len(skipped), folder)
    return None


def newest_to_resume(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """newest_valid, except that a folder whose checkpoints all fail to verify is an error: starting afresh beside
    them would lose the run's progress without a word, and prune (newest by step first) would then delete the new
    checkpoints before the corrupt ones."""
    hit = newest_valid(folder)
    found = list_checkpoints(folder)
    if hit is None and found:
        raise PekdError(f"none of the {len(found)} checkpoints in {str(folder)!r} verifies (newest: {found[0].name}); "
                        "restore a good one, or run with on_existing=overwrite to move the old run aside and start "
                        "afresh")
    return hit


def prune(folder: Path, keep_last: int, check: Callable[[], None] | None = None) -> None:
    """Keep the newest `keep_last` checkpoints (corrupt ones count too, and are removed last-in-line).

    `check` runs before each removal: a writer frozen between its save and this prune may have lost the run's lease
    meanwhile, and deleting is writing too.
    """
    for p in list_checkpoints(folder)[max(keep_last, 1):]:
        if check is not None:
            check()
        p.unlink(missing_ok=True)
