"""Atomic, verifiable checkpoints.

A checkpoint file is `MAGIC + sha256(payload) + payload`, where payload is torch.save's bytes. It is written to a
temp file in the same folder, fsynced, then os.replace'd over the final name and the folder fsynced, so a crash
(even kill -9) leaves either the old file set or the new one, never a half file under a real name. Loading
verifies the digest before unpickling (with weights_only=True), so a truncated or corrupted file is detected,
reported and skipped in favour of the next newest. A write that fails (disk full, file size limit, read-only
folder) removes its temp file and raises a one-line PekdError (pekd.engine.files): the previous files stay as
they were.

Retention (`prune`) counts only checkpoints that verify: a damaged file -- on disk, or left by a partial copy of
the run directory -- is moved aside into checkpoints/unverified/, never kept in place of a good one, so the newest
verified checkpoint can never be deleted. Anything in the folder that is not a regular checkpoint file (a folder
with a checkpoint's name, a symlink) is left alone.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pekd.engine.files import atomic_write_bytes, write_error
from pekd.errors import PekdError

MAGIC = b"PEKDCKPT1\n"
_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
log = logging.getLogger(__name__)


def save(state: dict[str, Any], path: Path, check: Callable[[], None] | None = None) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload, check)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise PekdError(f"cannot read checkpoint {str(path)!r}: {(e.strerror or str(e)).lower()}; check the "
                        "filesystem holding it, or move it aside") from None


def _payload(path: Path, raw: bytes) -> bytes:
    """The verified payload of a checkpoint file's bytes; PekdError naming the file when it is not one."""
    head = len(MAGIC) + 32
    if len(raw) < head or not raw.startswith(MAGIC):
        raise PekdError(f"{str(path)!r} is not a pekd checkpoint (bad header); it may be truncated")
    digest, payload = raw[len(MAGIC):head], raw[head:]
    if hashlib.sha256(payload).digest() != digest:
        raise PekdError(f"checkpoint {str(path)!r} fails its checksum (truncated or corrupted)")
    return payload


# Files verified by this process, by identity: prune re-reads the kept checkpoints at every save otherwise.
_verified: set[tuple[str, int, int, int]] = set()


def verify(path: Path) -> None:
    """Raise PekdError unless `path` is a whole, uncorrupted checkpoint (the digest only: nothing is unpickled).

    A file this process has verified before and that has not changed since (inode, size, mtime) is not read again.
    """
    try:
        st = path.stat()
    except OSError as e:
        raise PekdError(f"cannot read checkpoint {str(path)!r}: {(e.strerror or str(e)).lower()}") from None
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _payload(path, _read(path))
        _verified.add(key)


def load(path: Path) -> dict[str, Any]:
    """Load and verify; raises PekdError naming the file when it is truncated, corrupt or not ours."""
    payload = _payload(path, _read(path))
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # a digest that matches bytes torch cannot read: written by another program
        raise PekdError(f"checkpoint {str(path)!r} verifies but cannot be unpickled ({type(e).__name__}); move it "
                        "aside") from None


def ckpt_path(folder: Path, global_step: int) -> Path:
    return folder / f"ckpt-{global_step:09d}.pt"


def checkpoint_step(path: Path) -> int:
    """The global step in a checkpoint's file name."""
    found = _NAME.match(path.name)
    if not found:
        raise ValueError(f"{path.name!r} is not a checkpoint file name")
    return int(found.group(1))


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files newest first (by global step): regular files with a checkpoint's name, nothing else."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [Path(e.path) for e in entries if _NAME.match(e.name) and e.is_file(follow_symlinks=False)]
    return sorted(found, key=checkpoint_step, reverse=True)


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
    return None  # each caller says what none verifying means for it (an error, a note), once


def newest_to_resume(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """newest_valid, except that a folder whose checkpoints all fail to verify is an error: starting afresh beside
    them would lose the run's progress without a word."""
    hit = newest_valid(folder)
    found = list_checkpoints(folder)
    if hit is None and found:
        raise PekdError(f"none of the {len(found)} checkpoints in {str(folder)!r} verifies (newest: {found[0].name}); "
                        "restore a good one, or run with on_existing=overwrite to move the old run aside and start "
                        "afresh")
    return hit


UNVERIFIED = "unverified"


def _move_aside(path: Path, why: str) -> Path:
    """Move a checkpoint that does not verify into <folder>/unverified/ (kept for inspection, out of every count)."""
    aside = path.parent / UNVERIFIED / path.name
    try:
        aside.parent.mkdir(exist_ok=True)
        if aside.exists():
            aside = aside.with_name(f"{path.name}.{os.getpid()}-{os.urandom(3).hex()}")
        os.replace(path, aside)
    except OSError as e:
        raise write_error(aside, e, "move a damaged checkpoint to") from None
    log.warning("moved %s aside to %s: it does not verify (%s)", path.name, aside, why)
    return aside


def prune(folder: Path, keep_last: int, check: Callable[[], None] | None = None) -> None:
    """Keep the newest `keep_last` checkpoints that verify; move the ones that do not aside; delete older ones.

    The newest checkpoint -- just written by the caller -- is verified like every other, so a write that reached
    the disk damaged can never cost the good checkpoint before it. `check` runs before each removal or move: a
    writer frozen between its save and this prune may have lost the run's lease meanwhile, and deleting is
    writing too.
    """
    kept = 0
    for p in list_checkpoints(folder):
        try:
            verify(p)
        except PekdError as e:
            if check is not None:
                check()
            _move_aside(p, str(e))
            continue
        if kept < max(keep_last, 1):
            kept += 1
            continue
        if check is not None:
            check()
        try:
            p.unlink(missing_ok=True)
        except OSError as e:
            raise write_error(p, e, "delete the old checkpoint") from None
