"""What the launcher tests share: a tiny distillation recipe, submit.py's options for the local cluster, and waits
on its jobs.

Runs are tiny (8x8 digits, resnet8 student and a random resnet8 teacher, one thread per task): what the tests
check is the plumbing - requeue, resume, rendezvous - not the learning.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from launchers import submit
from slurm.local_cluster import LocalCluster
from tests.slurm_fixture import wait_for


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides of a tiny distillation run (a random teacher is enough to exercise every code path)."""
    from pekd.models import build_model

    weights = tmp_path_factory.mktemp("teacher") / "resnet8.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet8", 10, 1).state_dict(), weights)
    return ["data=digits", "model.name=resnet8", "teacher.name=resnet8", f"teacher.weights={weights}",
            "trainer.progress=false", "trainer.threads=1", "trainer.log_every_steps=5",
            "trainer.deterministic=true"]


def cpu_args(cluster: LocalCluster, folder: Path | str, nodes: int = 2, minutes: int = 10) -> list[str]:
    """submit.py's options for a CPU job of `nodes` one-task nodes on the local cluster."""
    return ["--folder", str(folder), "--gpus", "0", "--nodes", str(nodes), "--partition", cluster.partition,
            "--time", str(minutes)]


def finish(job, timeout_s: float = 240) -> str:
    """Wait for the job to leave the queue for good; returns SLURM's final state."""
    wait_for(lambda: job.watcher.is_done(job.job_id, mode="force"), timeout_s, f"job {job.job_id}")
    return job.watcher.get_state(job.job_id, mode="cache")


def run_log(run_dir: Path) -> str:
    """Rank 0's log of the run (every start of it, appended)."""
    return (run_dir / "logs" / "rank0.log").read_text()


def restart_count(cluster: LocalCluster, job_id: str) -> int:
    """How often SLURM requeued the job (same job id, next start)."""
    found = re.search(r"\bRestarts=(\d+)", cluster.run("scontrol", "show", "job", job_id).stdout)
    assert found, f"scontrol knows no job {job_id}"
    return int(found.group(1))


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """submit.py's stderr for a command it must refuse with exit 2."""
    with pytest.raises(SystemExit) as exit_info:
        submit.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err
