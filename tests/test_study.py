"""The study end to end at toy size (digits): teacher, banks, students along two budgets, stopped mid-way,
resumed by the same command, and reported along data.subset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train_helpers import REPO, env_for

pytestmark = pytest.mark.slow


def study_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "pekd.study", "--data", "digits", "--out", str(out), "--subsets", "256,512",
            "--epochs", "3", "--seeds", "2", "--methods", "fd,pefd_q1", "--processes", "2"]


def in_session(sid: int) -> list[int]:
    """Pids of the live processes in session sid (the study was started as its session's leader)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_toy_study_stops_resumes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "study"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(study_command(out), cwd=REPO, env=env_for(0, 1, 0), stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:  # stop it once a student has started: the students are then half done or undone
        deadline = time.monotonic() + 600
        while (not list(out.glob("subset*/*/seed*/config.yaml")) and first.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.2)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        # a shell's `kill PID`: the driver alone; it forwards the stop, the runs checkpoint, and nothing stays behind
        os.kill(first.pid, signal.SIGTERM)
        first.wait(timeout=300)
        assert first.returncode == 3, (tmp_path / "first.log").read_text()[-3000:]
        assert not in_session(first.pid), "workers of the stopped study are still running"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        log.close()
    assert not (out / "report.json").exists(), "the interrupted study must not have reported"

    again = subprocess.run(study_command(out), cwd=REPO, env=env_for(0, 1, 0), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "== teacher" not in again.stdout, again.stdout[:2000]  # the finished teacher is not trained again

    report = json.loads((out / "report.json").read_text())
    runs = sorted(out.glob("subset*/*/seed*"))
    assert len(runs) == 8
    for r in runs:
        assert json.loads((r / "results.json").read_text())["status"] == "completed"
        assert (r / "analysis.json").exists()
    claim = [c for c in report["comparisons"] if (c["a"], c["b"]) == ("PEFD q=1", "FD no projector")]
    assert sorted(c["along"]["data.subset"] for c in claim) == [256, 512], report["comparisons"]
    assert all(c["n"] == 2 for c in claim)
    # a third run of the same command trains nothing
    third = subprocess.run(study_command(out), cwd=REPO, env=env_for(0, 1, 0), capture_output=True, text=True,
                           timeout=900)
    assert third.returncode == 0 and "8 completed" in third.stdout and "student runs to train" not in third.stdout
