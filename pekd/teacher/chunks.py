"""The build's journal: one marker per finished chunk, holding the sha256 of the rows it wrote.

A chunk (bank.chunk samples, all K views) is the unit a build writes, shards over ranks and resumes. Its marker,
chunks/<chunk>.json, is written atomically by the rank that computed it, after the rows are flushed to disk, so a
marker always means "these rows are on disk, and these were their bytes". Sealing copies the digests into the
manifest, which is what training verifies against; the markers stay as the record of who built what.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pekd.engine.files import atomic_write_bytes
from pekd.teacher import bank

log = logging.getLogger("pekd")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def chunk_rows(chunk: int, size: int, n: int) -> np.ndarray:
    return np.arange(chunk * size, min((chunk + 1) * size, n), dtype=np.int64)


def marker(folder: Path, chunk: int) -> Path:
    return folder / bank.CHUNKS / f"{chunk:07d}.json"


def count(spec: dict[str, Any]) -> int:
    """Chunks of the bank: ceil(N / bank.chunk)."""
    return math.ceil(int(spec["shape"][1]) / int(spec["chunk"]))


def write_marker(folder: Path, chunk: int, rows: np.ndarray, rank: int, digest: str,
                 check: Callable[[], None]) -> None:
    """Record chunk `chunk` as finished; `check` (the build lease) runs right before the marker appears."""
    record = {"chunk": chunk, "rows": [int(rows[0]), int(rows[-1]) + 1], "rank": rank, "sha256": digest}
    atomic_write_bytes(marker(folder, chunk), json.dumps(record).encode(), check)


def finished_digest(folder: Path, chunk: int) -> str | None:
    """The digest a finished chunk's marker holds; None when there is no marker, or one that is not a marker this
    pekd wrote (an older build's, a damaged file): such a chunk is simply computed again."""
    path = marker(folder, chunk)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("chunk marker %s is unreadable (%s): the chunk is computed again", path, e)
        return None
    digest = record.get("sha256") if isinstance(record, dict) else None
    if not isinstance(digest, str) or not _HEX64.match(digest):
        log.warning("chunk marker %s holds no sha256 of its rows: the chunk is computed again", path)
        return None
    return digest


def pending_chunks(folder: Path, spec: dict[str, Any]) -> list[int]:
    """Chunks without a valid marker: the work left (a chunk killed half-way has none and is computed again)."""
    return [c for c in range(count(spec)) if finished_digest(folder, c) is None]


def any_finished(folder: Path) -> bool:
    """Whether some chunk marker exists: then features.bin holds rows a failed step must not throw away."""
    return any((folder / bank.CHUNKS).glob("*.json"))
