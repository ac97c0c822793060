"""features.bin takes all its space before the first row is written, so a full disk is an error, not a SIGBUS.

The build writes rows through a numpy memmap. Into a sparse file (`truncate`), a store to a page the filesystem
cannot back when it is written out is not an ENOSPC a program can catch: the kernel sends SIGBUS and the build dies
with status 135 and no word. So the bank's size is checked against the filesystem's free space before anything is
written, and the file is then preallocated: `posix_fallocate` (glibc itself emulates it where the kernel lacks
it), or, where the filesystem refuses it outright (EINVAL, EOPNOTSUPP), zeros written block by block -- both
reserve real blocks. Failing either way is one line naming the file, the bytes needed and the fix, and the same
command resumes after space was freed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pekd.errors import PekdError
from pekd.teacher.write_errors import RESUME, write_error

ZERO_BLOCK = 8 << 20  # bytes per write of the zero-filling fallback


def _scaled(n: float, base: int, units: tuple[str, ...]) -> str:
    i = 0
    while n >= base and i < len(units) - 1:
        n, i = n / base, i + 1
    return f"{n:.1f} {units[i]}"


def human_bytes(n: float) -> str:
    """Bytes in powers of 1024 (3.9 GiB), as free space and file sizes are read on a node."""
    return _scaled(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"))


def decimal_bytes(n: float) -> str:
    """Bytes in powers of 1000 (4.1 GB), as disks and quotas are sold and the docs quote a bank's size."""
    return _scaled(n, 1000, ("B", "kB", "MB", "GB", "TB"))


def bank_bytes(spec: dict[str, Any]) -> int:
    """Size of features.bin for this spec: K x N rows of d (+ C logits) values of its dtype."""
    k, n, d = (int(s) for s in spec["shape"])
    return k * n * d * np.dtype(spec["dtype"]).itemsize


def row_words(spec: dict[str, Any]) -> str:
    """A row's columns in words: '64' (features only) or '64 + 10 logits'."""
    width, logits = int(spec["shape"][2]), int(spec.get("logits", 0))
    return f"{width - logits} + {logits} logits" if logits else str(width)


def existing_ancestor(path: Path) -> Path:
    """`path` or the nearest of its parents that exists: where a folder about to be made will live."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def allocated_bytes(path: Path) -> int:
    """Bytes of `path` backed by disk blocks (0 when it does not exist yet)."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def room(features: Path, size: int) -> tuple[int, int]:
    """(bytes still to reserve for features.bin, bytes free on the filesystem that will hold it)."""
    needed = max(0, size - allocated_bytes(features))
    return needed, shutil.disk_usage(existing_ancestor(features.parent)).free


def size_line(folder: Path, spec: dict[str, Any]) -> str:
    """The bank's size and what its filesystem has left, printed before the build computes anything."""
    size = bank_bytes(spec)
    needed, free = room(folder / "features.bin", size)
    k, n, _ = spec["shape"]
    exact = " (every view)" if spec["views"].get("exact") else ""
    reserved = "all of it reserved" if needed == 0 else f"{human_bytes(size - needed)} of it reserved"
    return (f"feature bank {folder}: {k} views{exact} x {n} images x {row_words(spec)} {spec['dtype']} = "
            f"{decimal_bytes(size)}, {human_bytes(size)} ({size} bytes) in features.bin, {reserved}; "
            f"{human_bytes(free)} left free on its filesystem")


def check_room(folder: Path, spec: dict[str, Any]) -> None:
    """Refuse, before anything is written, a bank its filesystem cannot hold (quotas are found by allocate)."""
    size = bank_bytes(spec)
    needed, free = room(folder / "features.bin", size)
    if needed > free:
        raise PekdError(f"feature bank {str(folder)!r} needs {human_bytes(size)} ({size} bytes) for features.bin "
                        f"({needed} bytes not reserved yet), but its filesystem has {human_bytes(free)} ({free} "
                        f"bytes) free; free {human_bytes(needed - free)} there, or choose a teacher.bank on a "
                        f"filesystem with room; {RESUME}")


def _zero_fill(fd: int, size: int) -> None:
    """Extend the file to `size` with written zeros: the blocks exist once the writes return."""
    block = bytes(ZERO_BLOCK)
    at = os.fstat(fd).st_size
    while at < size:
        at += os.pwrite(fd, block[:min(ZERO_BLOCK, size - at)], at)


def allocate(path: Path, size: int, fresh: bool) -> None:
    """Make `path` a file of `size` bytes whose every block is reserved. `fresh`: no finished chunk lives in it, so
    a failed attempt truncates it to nothing and hands back what it took (a resumed file keeps its rows)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(path, e, "create") from None
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            _zero_fill(fd, size)
    except OSError as e:
        if fresh:
            with contextlib.suppress(OSError):  # never hide the first error behind a second one
                os.ftruncate(fd, 0)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise PekdError(f"cannot reserve {human_bytes(size)} ({size} bytes) for {str(path)!r}: "
                            f"{(e.strerror or str(e)).lower()} ({human_bytes(free)} free on that filesystem); free "
                            f"space there (or within your quota), or choose a teacher.bank on a filesystem with "
                            f"room; {RESUME}") from None
        raise write_error(path, e, "reserve space for") from None
    finally:
        os.close(fd)
