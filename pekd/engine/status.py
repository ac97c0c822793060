"""Whether a run directory holds a finished run, read without importing torch (submit.py and pekd.study ask this
of every planned run before anything starts)."""

from __future__ import annotations

import json
from pathlib import Path


def completed(run_dir: Path) -> bool:
    """A run whose results.json says it finished: a resubmitted sweep or a rerun study must not train it again."""
    try:
        return json.loads((run_dir / "results.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False
