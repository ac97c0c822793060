"""The shape of a bank's JSON records -- manifest.json (sealed) and building.json (in progress) -- checked on read.

Both are read by code that indexes into them (`spec["shape"][2]`, `manifest["teacher"]["name"]`); a file that
parses but is not what pekd wrote (a JSON list, a key missing, a string where a number belongs: a hand edit, a
copy of another tool's file, a bank of a far older pekd) would otherwise end in an AttributeError or KeyError deep
in training. pekd.teacher.bank.read_record makes it one PekdError naming the file, the first field that is wrong
and the way out.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

# 2: the spec names the pipeline that made the pixels; 3: views keyed by bank.seed; 4: content checksums; 5: exact
# banks (views.exact: every view of a finite augmentation, numbered by pekd.data.view_space); 6: the teacher's
# logits may follow the feature in each row ("logits": how many columns, 0 for none)
FORMAT = 6
# 3 and 4 are read as banks of drawn views (views.exact false, all they could be); format 3 also with a warning:
# the same rows, but nothing to verify them against. 5 is 6 without logits, byte for byte
LEGACY_FORMATS = (3, 4, 5)
CHECKSUMS_SINCE = 4
EXACT_SINCE = 5
LOGITS_SINCE = 6
DTYPES = ("float16", "float32")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# field (dotted) -> the types its value may have; bool is refused where an int is asked for.
SPEC_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (int,),
    "pekd_version": (str,),
    "teacher.name": (str,),
    "teacher.weights_sha256": (str,),
    "data.name": (str,),
    "data.split": (str,),
    "data.n": (int,),
    "data.labels_sha256": (str,),
    "views.augment": (str,),
    "views.image_size": (int,),
    "views.seed": (int,),
    "views.K": (int,),
    "views.exact": (bool,),
    "views.pixels": (str,),
    "dtype": (str,),
    "shape": (list,),
    "logits": (int,),
    "file": (str,),
    "chunk": (int,),
    "precision.amp": (str,),
    "precision.channels_last": (bool,),
}
SEALED_FIELDS: dict[str, tuple[type, ...]] = {
    **SPEC_FIELDS,
    "teacher.top1": (int, float),
    "eval": (dict,),
    "build": (dict,),
}


class Malformed(ValueError):
    """What is wrong with a record, in words (the caller adds which file and what to do)."""


def _get(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise Malformed(f"it has no {dotted!r}")
        value = value[part]
    return value


_WORDS = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object", bool: "true/false"}


def _check_types(record: dict[str, Any], fields: dict[str, tuple[type, ...]]) -> None:
    for dotted, types in fields.items():
        value = _get(record, dotted)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise Malformed(f"{dotted!r} is {value!r}, not {' or '.join(_WORDS[t] for t in types)}")


def check_spec(record: dict[str, Any], sealed: bool) -> None:
    """Raise Malformed unless `record` has every field a bank's spec (and, sealed, its manifest) must have."""
    fmt = _get(record, "format")
    if fmt != FORMAT and fmt not in LEGACY_FORMATS:
        raise Malformed(f"it is format {fmt!r}; this pekd reads formats {[*LEGACY_FORMATS, FORMAT]}")
    fields = SEALED_FIELDS if sealed else SPEC_FIELDS
    since = {"views.exact": EXACT_SINCE, "logits": LOGITS_SINCE}
    _check_types(record, {k: v for k, v in fields.items() if fmt >= since.get(k, 0)})
    shape, k, n = record["shape"], record["views"]["K"], record["data"]["n"]
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise Malformed(f"'shape' is {shape!r}, not [K, N, d] of positive integers")
    if shape[:2] != [k, n]:
        raise Malformed(f"'shape' {shape} does not start with views.K={k} and data.n={n}")
    if not 0 <= logits_of(record) < shape[2]:
        raise Malformed(f"'logits' is {record['logits']}, not 0 or the number of a row's {shape[2]} columns that are "
                        "the teacher's logits (after its feature)")
    if record["dtype"] not in DTYPES:
        raise Malformed(f"'dtype' is {record['dtype']!r}, not one of {list(DTYPES)}")
    if record["chunk"] <= 0:
        raise Malformed(f"'chunk' is {record['chunk']}, not a positive number of samples")
    if sealed and fmt >= CHECKSUMS_SINCE:
        digests = _get(record, "checksums.sha256")
        chunks = math.ceil(n / record["chunk"])
        if not isinstance(digests, list) or len(digests) != chunks:
            raise Malformed(f"'checksums.sha256' is not a list of {chunks} digests (one per chunk)")
        bad = next((d for d in digests if not isinstance(d, str) or not _HEX64.match(d)), None)
        if bad is not None:
            raise Malformed(f"'checksums.sha256' holds {bad!r}, not a sha256 hex digest")


def logits_of(record: dict[str, Any]) -> int:
    """How many columns of each row are the teacher's logits (after its feature): 0 in a bank without them, as in
    every bank before format 6."""
    return int(record.get("logits", 0))


def holds_logits(path: Path) -> bool | None:
    """Whether the sealed bank whose manifest.json is `path` holds the teacher's logits; None where the file cannot
    be read as an object (no bank yet, or a damaged one: the bank's own checks name what is wrong). Reads the
    manifest alone: for checks before a build or a queue, without opening or hashing the bank."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return bool(logits_of(record)) if isinstance(record, dict) else None
