"""The one line for a feature bank file that could not be written: which file, why (the OS's words), the fix.

A precompute writes features.bin, chunk markers, building.json, the manifest and its logs; any of them can meet a
full disk, a quota, a read-only remount or a folder it may not write. Each is one PekdError saying what to do,
never a traceback, and the build resumes with the same command once the cause is gone (finished chunks are kept).
"""

from __future__ import annotations

import errno
from pathlib import Path

from pekd.engine import files
from pekd.errors import PekdError

RESUME = "then re-run the same command (finished chunks are kept)"
_FIXES = {
    errno.ENOSPC: f"free space on that filesystem, or choose a teacher.bank on one with room; {RESUME}",
    errno.EDQUOT: f"free space within your quota, or choose a teacher.bank on a filesystem with room; {RESUME}",
    errno.EFBIG: f"raise the file size limit (ulimit -f), or choose a teacher.bank on a filesystem that allows "
                 f"larger files; {RESUME}",
    errno.EROFS: "choose a teacher.bank on a writable filesystem (a sealed bank can be read from a read-only one)",
    errno.EACCES: "make the folder writable, or choose another teacher.bank",
    errno.EPERM: "make the folder writable, or choose another teacher.bank",
}


def write_error(path: Path, e: OSError, doing: str = "write") -> PekdError:
    """`cannot <doing> '<path>': <why>; <fix>` for an OSError met writing a bank."""
    return files.write_error(path, e, doing, _FIXES, f"check the filesystem holding {str(path.parent)!r}; {RESUME}")
