"""`python -m pekd.demo` end to end at a toy size: every method for every seed on the same data, paired, analysed,
and both claims reported with their statistics (the real sizes run in `make demo`); on the console one line per
student run with the phase's progress, their per-step lines only in their own logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pekd.cluster.run_files import STEP_LINE
from pekd.science.one_driver import one_driver
from tests.train_helpers import REPO, env_for, run_python

pytestmark = pytest.mark.slow


def test_the_demo_tests_both_claims_paired_by_seed(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "pekd.demo", "--out", str(out), "--seeds", "2", "--first-seed", "7",
                           "--teacher-subset", "600", "--teacher-epochs", "1", "--student-subset", "128",
                           "--student-epochs", "2", "--val-subset", "1000"], cwd=REPO, env=env_for(0, 1, 0),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    rows = {r["label"]: r for r in report["rows"]}
    assert set(rows) == {"demo_teacher", "CE", "KD T=4", "FD no projector", "PEFD q=1", "PEFD q=3"}
    for label in ("CE", "KD T=4", "FD no projector", "PEFD q=1", "PEFD q=3"):
        assert [r["seed"] for r in rows[label]["runs"]] == [7, 8]
    claims = {(c["a"], c["b"]): c for c in report["comparisons"]}
    assert set(claims) == {("PEFD q=1", "FD no projector"), ("PEFD q=3", "PEFD q=1")}
    assert all(c["n"] == 2 and c["p_holm"] is not None and c["test"] == "perm" for c in claims.values())
    eval_sets = set()
    for run_dir in out.glob("*/seed*"):
        results = json.loads((run_dir / "results.json").read_text())
        analysis = json.loads((run_dir / "analysis.json").read_text())
        eval_sets.add(json.dumps(results["eval_set"], sort_keys=True))
        assert results["eval_set"]["n"] == 1000 and analysis["n_test"] == 1000
        assert analysis["student_cka"] is not None and analysis["train_test_gap"] is not None
        assert analysis["test_pass"] == "final evaluation"  # no second pass over the test set
        assert len(results["history"]) == 2 and sum("top1" in h for h in results["history"]) == 1  # one eval
    assert len(eval_sets) == 1 and len(list(out.glob("*/seed*"))) == 10
    for title in ("claim 1: a projector helps when d_s = d_t", "claim 2: an ensemble of projectors helps more"):
        assert title in done.stdout
    assert "## Mechanism" in done.stdout and (out / "report.png").stat().st_size > 0
    assert "10 runs from their final evaluation" in done.stdout and "second pass" not in done.stdout
    assert "budget: 128 images x 2 epochs = 4 optimizer steps per student" in done.stdout
    # one line per student run as it finishes, with the phase's progress; an ETA while runs are left
    finished = [line for line in done.stdout.splitlines() if re.match(r"   \[ ?\d+/10\] ", line)]
    assert [line[4:9] for line in finished] == [f"{i:>2}/10" for i in range(1, 11)], done.stdout
    assert all(re.fullmatch(r"   \[ ?\d+/10\] \w+/seed[78]: top-1 \d+\.\d\d% \(\d+ s\); phase eta \w+", line)
               for line in finished[:-1]) and finished[-1].endswith(" s)"), finished
    assert sorted(re.search(r"\] (\S+):", line).group(1) for line in finished) == sorted(
        f"{d.parent.name}/{d.name}" for d in out.glob("*/seed*"))
    # the students' per-step lines are in their own logs, with an ETA; on the console only the teacher's (trained
    # in the demo's own process)
    for run_dir in out.glob("*/seed*"):
        steps = [line for line in (run_dir / "logs" / "rank0.log").read_text().splitlines() if STEP_LINE.search(line)]
        assert len(steps) == 2 and all(", eta " in line for line in steps), steps
    teacher = [line.split(" INFO ", 1)[1] for line in (out / "teacher" / "logs" / "rank0.log").read_text().splitlines()
               if STEP_LINE.search(line)]
    console = (done.stdout + done.stderr).splitlines()
    assert teacher and [line for line in console if STEP_LINE.search(line)] == teacher


def test_a_demo_folder_of_an_earlier_pekd_is_one_line_before_any_write(tmp_path: Path) -> None:
    """Its bank holds no teacher logits (format 5) and its KD runs ran the teacher online: refused at once, naming
    the way out, instead of a teacher retrained and then a bank error."""
    out = tmp_path / "demo"
    (out / "bank").mkdir(parents=True)
    (out / "bank" / "manifest.json").write_text(json.dumps({"format": 5, "shape": [2, 500, 64]}))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    done = subprocess.run([sys.executable, "-m", "pekd.demo", "--out", str(out)], cwd=REPO, env=env_for(0, 1, 0),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.startswith(f"error: {out} holds a demo of an earlier pekd") and f"mv {out} " in done.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_a_second_demo_on_the_same_folder_is_one_line_naming_the_first(tmp_path: Path) -> None:
    """The same command typed twice: the second is refused at its start, before it writes anything, naming the
    driver that holds the folder -- not at the first run the other holds, after training the ones it had not
    reached (pekd.science.one_driver)."""
    out = tmp_path / "demo"
    with one_driver(out, "`python -m pekd.demo`"):  # this test process is the first driver
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        done = run_python(["-m", "pekd.demo", "--out", str(out)], timeout=120)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: {str(out)!r} is in use by another `python -m pekd.demo`: host ")
    assert f"pid {os.getpid()}," in done.stderr and "kill -TERM" in done.stderr


def test_an_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    """--out naming a file: one line saying so (it had been "cannot create the lease folder ...; choose a run_dir"),
    the file untouched."""
    out = tmp_path / "demo"
    out.write_bytes(b"notes\n")
    done = run_python(["-m", "pekd.demo", "--out", str(out)], timeout=120)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: --out {str(out)!r} is a file; give `python -m pekd.demo` a folder (a new one, or the --out of its "
        "earlier run to resume it)"], done.stderr
    assert out.read_bytes() == b"notes\n"
