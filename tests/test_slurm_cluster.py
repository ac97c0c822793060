"""The local cluster behaves like a real one where the launcher depends on it: batch jobs, submitit jobs on
two nodes, job states through the sacct stand-in, and a USR2 that reaches the job and requeues it."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from slurm.local_cluster import LocalCluster
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401

# pytest imports this file under a name the job's interpreter cannot import: ship its code by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.slow


def _sacct_state(cluster: LocalCluster, job_id: str) -> str:
    out = cluster.run("sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id).stdout
    rows = [line.split("|") for line in out.splitlines()[1:]]
    return {row[0]: row[1] for row in rows}.get(job_id, "")


def _final_state(job: submitit.Job) -> str:
    """The job's state once SLURM has finished it; job.state alone may be a cached PENDING/RUNNING."""
    wait_for(lambda: job.watcher.is_done(job.job_id, mode="force"), 30, f"job {job.job_id} to finish")
    return job.watcher.get_state(job.job_id, mode="cache")


def test_start_is_idempotent_and_stop_leaves_no_daemon(tmp_path_factory: pytest.TempPathFactory) -> None:
    cluster = LocalCluster(tmp_path_factory.mktemp("lc"))
    cluster.start()
    pids = cluster.daemons()
    assert cluster.is_running() and set(pids) == {"munged", "slurmctld", "slurmd-127.0.0.1"}
    cluster.start()
    assert cluster.daemons() == pids
    cluster.stop()
    assert not any(Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes()
                   for pid in pids.values())
    assert not any(cluster.daemons().values())


def test_sbatch_job_runs_and_sacct_reports_it(slurm_cluster: LocalCluster, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out.txt"
    submitted = slurm_cluster.run(
        "sbatch", "--parsable", "-o", str(out), "--wrap", "echo hello from $SLURM_JOB_NODELIST"
    )
    job_id = submitted.stdout.strip().split(";")[0]
    wait_for(lambda: _sacct_state(slurm_cluster, job_id) == "COMPLETED", 30, "the job to complete")
    assert out.read_text().startswith("hello from 127.0.0.")


def _whoami() -> tuple[int, int, str]:
    env = submitit.JobEnvironment()
    return env.global_rank, env.num_tasks, socket.gethostbyname(env.hostnames[0])


def test_submitit_two_node_job(slurm_env: LocalCluster, tmp_path: Path) -> None:  # noqa: F811
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    executor.update_parameters(slurm_partition=slurm_env.partition, timeout_min=5, nodes=2, tasks_per_node=1)
    job = executor.submit(_whoami)
    results = job.results()
    # Both ranks ran, and the first node's name resolves: torch's MASTER_ADDR will be reachable.
    assert sorted(results) == [(0, 2, "127.0.0.1"), (1, 2, "127.0.0.1")]
    assert _final_state(job) == "COMPLETED"


class _SleepUntilRequeued(submitit.helpers.Checkpointable):
    """Sleeps on its first start (to be interrupted); returns how many times it started."""

    def __call__(self, marker: Path) -> int:
        with marker.open("a") as f:
            f.write("start\n")
        starts = marker.read_text().count("start")
        if starts == 1:
            time.sleep(300)
        return starts


def test_usr2_reaches_job_and_requeues_it(slurm_env: LocalCluster, tmp_path: Path) -> None:  # noqa: F811
    marker = tmp_path / "starts.txt"
    executor = submitit.AutoExecutor(folder=tmp_path / "%j")
    executor.update_parameters(slurm_partition=slurm_env.partition, timeout_min=10)
    job = executor.submit(_SleepUntilRequeued(), marker)
    wait_for(marker.exists, 60, "the job to start")
    slurm_env.run("scancel", "--signal=USR2", job.job_id)
    assert job.result() == 2
    assert _final_state(job) == "COMPLETED"
    assert "Caught signal SIGUSR2" in job.stderr()
