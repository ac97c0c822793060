"""launchers/submit.py never queues a run twice: a run whose lease is live or whose job is still queued or running is
refused naming the job, and the rest of the sweep is submitted (pekd.cluster.launch_guard).

The cluster test takes ~20-40 s (the local SLURM cluster, shared by the session, plus two jobs cancelled at once).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from launchers import submit
from pekd.cluster.launch_guard import busy_runs
from pekd.engine.lease import Lease
from slurm.local_cluster import LocalCluster
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401
from tests.train_helpers import TINY


def test_a_live_lease_or_a_queued_job_makes_a_run_busy(tmp_path: Path) -> None:
    leased, free = tmp_path / "a", tmp_path / "b"
    lease = Lease.acquire(leased, stale_s=60)
    free.mkdir()
    [busy] = busy_runs([leased, free], tmp_path, queue=False)
    assert busy.run_dir == leased and f"host {socket.gethostname()} pid {os.getpid()}" in busy.why
    lease.release()
    assert busy_runs([leased, free], tmp_path, queue=False) == []


@pytest.mark.slow
def test_the_same_sweep_submitted_twice_queues_nothing_while_the_first_is_queued_or_running(
        slurm_env: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    argv = ["--folder", str(tmp_path / "runs"), "--gpus", "0", "--nodes", "1", "--partition", slurm_env.partition,
            "--time", "10", "-m", *TINY, "method=ce", "teacher=none", "trainer.epochs=50", "seed=0,1"]

    def queued() -> set[str]:
        return set(slurm_env.run("squeue", "-h", "-r", "-o", "%i").stdout.split())

    first = submit.main(argv)
    try:
        assert len(first) == 2
        before = queued()
        assert {j.job_id for j in first} <= before
        capsys.readouterr()
        second = submit.main(argv)
        out = capsys.readouterr().out
        assert second == [] and queued() == before, out
        refused = [line for line in out.splitlines() if line.startswith("not submitted, already taken:")]
        assert len(refused) == 2, out
        for job in first:
            assert any(f"job {job.job_id} is " in line or "its lease is live" in line for line in refused), out
        assert "nothing to submit" in out
        records = sorted((tmp_path / "runs" / "launches").glob("*.json"))
        assert len(records) == 1 and len(json.loads(records[0].read_text())["runs"]) == 2
    finally:
        slurm_env.run("scancel", *{j.job_id.split("_")[0] for j in first})
        wait_for(lambda: not (queued() & {j.job_id for j in first}), 120, "the cancelled jobs to leave the queue")
