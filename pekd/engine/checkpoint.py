"""Atomic, verifiable checkpoints.

A checkpoint file is `MAGIC + sha256(payload) + payload`, where payload is torch.save's bytes. It is written to a
temp file in the same folder, fsynced, then os.replace'd over the final name and the folder fsynced, so a crash
(even kill -9) leaves either the old file set or the new one, never a half file under a real name. Loading
verifies the digest before unpickling (with weights_only=True), so a truncated or corrupted file is detected,
reported and skipped in favour of the next newest.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save(state: dict[str, Any], path: Path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)


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
    """The newest checkpoint that verifies; corrupt ones are reported and skipped, never deleted."""
    for p in list_checkpoints(folder):
        try:
            return p, load(p)
        except PekdError as e:
            log.warning("skipping %s", e)
    return None


def prune(folder: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints (corrupt ones count too, and are removed last-in-line)."""
    for p in list_checkpoints(folder)[max(keep_last, 1):]:
        p.unlink(missing_ok=True)
