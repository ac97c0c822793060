"""Every file pekd writes goes through here: all or nothing, and a failure is one line naming the file and the fix.

A write goes to a temp file in the same folder, is fsynced, then os.replace'd over the final name and the folder
fsynced, so a crash (even kill -9) leaves either the old file or the new one, never a half file under a real name.
A write that fails -- a full disk or quota, a read-only remount, no permission, an I/O error -- removes its temp
file and raises a PekdError that names the file, the OS's reason and what to do; the cleanup can never mask that
first error (on a read-only filesystem the unlink fails too, and there is nothing to clean up anyway).

JSON is written strictly: NaN and infinities are not JSON (Python's json writes them, other readers refuse the
file), so a non-finite number becomes null, and the record's status field says why it has no value.
"""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pekd.errors import PekdError

# What to do about a failed write, by errno: the fixes a user can act on.
_WRITE_FIXES = {
    errno.ENOSPC: "free space on that filesystem, or move run_dir (or the bank folder) to one with room; then run "
                  "the same command again",
    errno.EDQUOT: "free space within your quota, or move run_dir (or the bank folder) to a filesystem with room",
    errno.EFBIG: "raise the file size limit (ulimit -f), or move run_dir (or the bank folder) to a filesystem "
                 "that allows larger files",
    errno.EROFS: "the filesystem is read-only (remounted after an error?): remount it writable, or move run_dir "
                 "(or the bank folder, or --out) to a writable filesystem",
    errno.EACCES: "make the folder writable, or choose another run_dir (or bank folder, or --out)",
    errno.EPERM: "make the folder writable, or choose another run_dir (or bank folder, or --out)",
    errno.EIO: "the storage reported an I/O error: check the disk or network filesystem, then run the same command "
               "again",
    errno.EISDIR: "a folder is where pekd writes that file: move the folder aside, then run the same command again",
}


def write_error(path: Path | str, e: OSError, what: str = "write", fixes: Mapping[int, str] | None = None,
                otherwise: str = "check the filesystem holding that folder") -> PekdError:
    """The one-line error for a file pekd could not write: which file, why (the OS's words) and the fix (by errno:
    `fixes` where a writer has its own words, e.g. the bank's, else the run directory's)."""
    why = (e.strerror or str(e)).lower()
    fix = (_WRITE_FIXES if fixes is None else fixes).get(e.errno or 0, otherwise)
    return PekdError(f"cannot {what} {str(path)!r}: {why}; {fix}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, check: Callable[[], None] | None = None) -> None:
    """Write `data` to `path` all or nothing (temp file, fsync, os.replace, fsync of the folder).

    On any failure -- Ctrl-C mid-write included -- the temp file is removed (as far as the filesystem lets it),
    so a full disk is not made fuller by the attempt and the folder holds no debris; an OSError becomes a PekdError
    naming the file and the fix. `check` runs right before the replace (pekd.engine.lease: a writer that lost its
    run's lease writes nothing).
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
        _fsync_dir(path.parent)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # EROFS, EIO: the first error is the one to report
            pass
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def json_safe(obj: Any) -> Any:
    """obj with every NaN or infinity replaced by None (JSON null), recursively through dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def json_bytes(obj: Any) -> bytes:
    """Strict JSON (no NaN/Infinity), indented and key-sorted so that files diff well."""
    return (json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json(path: Path, obj: Any, check: Callable[[], None] | None = None) -> None:
    atomic_write_bytes(path, json_bytes(obj), check)
