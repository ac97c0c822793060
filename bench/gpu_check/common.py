"""What every gpu_check step shares: where its result goes, how an exception becomes a FAIL, the tiny recipe.

bench/gpu_check.sh gives each step GPU_CHECK_RESULTS (a folder: one `<check>.json` per result) and GPU_CHECK_WORK
(scratch space for run directories). A step that dies without recording anything -- a timeout, a segfault -- is
recorded as FAIL by the shell script instead (`python -m bench.gpu_check.common record CHECK STATUS FIGURE`), so
a missing result can never read as a pass. This module imports torch only where it needs it: the shell script
calls it between steps.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PASS, FAIL, NOT_CHECKED = "PASS", "FAIL", "NOT CHECKED"

# The tiny recipe of tests/train_helpers.py (sklearn's digits, offline everywhere; resnet8; 22 steps an epoch at
# batch 64) without its AMP and determinism settings, which each step sets as it checks them. One intra-op thread:
# the GPU does the work, and the CPU rehearsal shares a few busy cores.
DIGITS = ["data=digits", "model=resnet8", "trainer.progress=false", "trainer.log_every_steps=1", "data.workers=0",
          "trainer.threads=1"]


def results_dir() -> Path:
    return Path(os.environ.get("GPU_CHECK_RESULTS", "gpu_check_results"))


def work_dir(name: str) -> Path:
    """A fresh scratch folder for one step."""
    path = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/pekd_gpu_check")) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def record(check: str, status: str, figure: str, **details: Any) -> None:
    """Write one result; printed too, so the step's log says what the table will."""
    assert status in (PASS, FAIL, NOT_CHECKED), status
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    row = {"check": check, "status": status, "figure": figure, "details": details}
    (out / f"{check}.json").write_text(json.dumps(row, indent=1, default=str))
    print(f"[{check}] {status}: {figure}", flush=True)


class Terminated(Exception):
    """The step's `timeout` sent SIGTERM."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(f"stopped by its timeout (signal {signum})")


def run_step(check: str, body: Callable[[], tuple[str, str, dict[str, Any]]]) -> None:
    """Run `body` -> (status, figure, details) and record it; an exception is a FAIL naming it (traceback in the
    log). The exit status is 1 on FAIL, so the shell script's own bookkeeping agrees with the result file.

    Training processes started through tests.train_helpers run in sessions of their own, out of reach of the
    `timeout` that kills this step's process group, so they are killed here however the step ends."""
    from tests.train_helpers import LIVE

    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.perf_counter()
    try:
        status, figure, details = body()
    except Exception as e:  # the check's verdict: anything that went wrong is a FAIL, said in one line
        traceback.print_exc()
        status, figure, details = FAIL, f"{type(e).__name__}: {' '.join(str(e).split())[:300]}", {}
    finally:
        while LIVE:
            LIVE.pop().kill_group()
    details["seconds"] = round(time.perf_counter() - t0, 1)
    record(check, status, figure, **details)
    sys.exit(1 if status == FAIL else 0)


def random_teacher(folder: Path, name: str = "resnet8", classes: int = 10, in_chans: int = 1) -> Path:
    """Any fixed teacher serves equivalence checks; a seeded random one needs no download."""
    import torch

    from pekd.models import build_model

    path = folder / f"teacher_{name}.pt"
    if not path.exists():
        torch.manual_seed(123)
        torch.save(build_model(name, classes, in_chans).state_dict(), path)
    return path


def overrides(*extra: str) -> list[str]:
    """DIGITS with `extra` (key=value) replacing any default of the same key: Hydra refuses a key given twice."""
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in DIGITS if o.split("=", 1)[0] not in keys] + list(extra)


def error_of(stderr: str) -> str:
    """The line of a child's stderr that says what went wrong (pekd's `error:` line or the exception's last
    line), not the tail of a C++ stack that torch prints after it."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    said = [x for x in lines if x.startswith("error:") or (": " in x and x.split(":")[0].split(".")[-1].endswith(
        ("Error", "Exception", "Interrupt")))]
    return (said[-1] if said else " ".join(lines[-3:]))[:600]


def finished(run_dir: Path) -> dict[str, Any]:
    """The run's results.json (status completed/preempted/stopped), or an AssertionError saying it has none."""
    path = run_dir / "results.json"
    assert path.exists(), f"{run_dir} has no results.json: the run did not finish"
    return json.loads(path.read_text())


def show(check: str, seconds: str) -> None:
    """The console line for a finished step."""
    row = json.loads((results_dir() / f"{check}.json").read_text())
    print(f"  {row['status']:<11} {check} ({seconds} s): {row['figure']}", flush=True)


if __name__ == "__main__":  # the shell script's bookkeeping: record CHECK STATUS FIGURE | show CHECK SECONDS
    if sys.argv[1] == "record":
        record(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        show(sys.argv[2], sys.argv[3])
