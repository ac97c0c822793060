"""The study's `--launcher slurm` path against the local SLURM cluster, at toy size (digits): the teacher is
submitted, a rerun while its job is queued or running submits nothing twice, the next rerun builds the banks and
submits every student, and the last one reports -- the workflow docs/study.md gives a cluster user."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pekd.engine.status import completed
from slurm.local_cluster import LocalCluster
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401
from tests.train_helpers import REPO

pytestmark = pytest.mark.slow


def study(out: Path, jobs: Path, cluster: LocalCluster) -> subprocess.CompletedProcess[str]:
    submit_args = f"--folder {jobs} --nodes 1 --partition {cluster.partition} --time 10"
    cmd = [sys.executable, "-m", "pekd.study", "--data", "digits", "--out", str(out), "--subsets", "256",
           "--epochs", "2", "--seeds", "2", "--methods", "fd,pefd_q1", "--teacher-epochs", "4", "--launcher", "slurm",
           "--submit-args", submit_args]
    # os.environ carries SLURM_CONF and the sacct stand-in's PATH (slurm_env); the jobs inherit PYTHONPATH
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def launches(jobs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((jobs / "launches").glob("*.json"))]


def test_study_through_slurm_submits_each_phase_once_and_reports(
    slurm_env: LocalCluster, tmp_path: Path  # noqa: F811
) -> None:
    out, jobs = tmp_path / "study", tmp_path / "jobs"
    first = study(out, jobs, slurm_env)
    assert "teacher submitted; rerun this command" in first.stdout, first.stdout
    again = study(out, jobs, slurm_env)  # a user rerunning too early
    if not (out / "teacher" / "student.pt").exists():
        assert "not submitted, already taken" in again.stdout, again.stdout
    assert len(launches(jobs)) == 1, "the teacher was submitted twice"

    wait_for(lambda: (out / "teacher" / "student.pt").exists(), 400, "the teacher's job to export its weights")
    students = study(out, jobs, slurm_env)
    assert "== feature bank" in students.stdout and "student runs submitted" in students.stdout, students.stdout
    student_launches = launches(jobs)[1:]
    runs = [Path(r["run_dir"]) for record in student_launches for r in record["runs"]]
    assert sorted(r.relative_to(out).as_posix() for r in runs) == [  # folders name the epochs unless 24
        f"subset256-epochs2/{m}/seed{s}" for m in ("fd", "pefd_q1") for s in (0, 1)]

    wait_for(lambda: all(completed(r) for r in runs), 500, "the four student jobs to complete")
    last = study(out, jobs, slurm_env)
    assert "study done" in last.stdout and "submitted" not in last.stdout, last.stdout
    assert len(launches(jobs)) == 1 + len(student_launches), "a finished run was submitted again"
    for r in runs:
        assert (r / "analysis.json").is_file()
        assert json.loads((r / "results.json").read_text())["status"] == "completed"
    report = json.loads((out / "report.json").read_text())
    [claim] = [c for c in report["comparisons"] if (c["a"], c["b"]) == ("PEFD q=1", "FD no projector")]
    assert claim["along"]["data.subset"] == 256 and claim["n"] == 2
