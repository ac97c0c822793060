"""`launchers/submit.py --runs-per-gpu K` end to end on the local SLURM cluster, with CPU tasks (--gpus 0: K runs per
array task, one thread each): a preempted pack checkpoints, requeues and resumes all its runs bit for bit; a run
that fails leaves its pack mates training; runs that are not single-process are refused before anything is queued.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from launchers import submit
from pekd.cluster.status import main as status
from pekd.engine.lease import live_holder
from pekd.models import read_weights
from slurm.local_cluster import LocalCluster
from tests.launcher_helpers import cpu_args, finish, refused, restart_count, run_log, tiny  # noqa: F401 (a fixture)
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401 (fixtures)
from tests.train_helpers import TINY

pytestmark = pytest.mark.slow


def logged_step(run_dir: Path) -> int:
    """The newest step of the run's training log lines (0 before the first)."""
    path = run_dir / "logs" / "rank0.log"
    steps = re.findall(r"epoch \d+ step \d+/\d+ \(global (\d+)\)", path.read_text() if path.exists() else "")
    return int(steps[-1]) if steps else 0


def launched_jobs(folder: Path) -> dict[str, str]:
    """run directory -> its job, from the launch record of the submission."""
    [record] = (folder / "launches").glob("*.json")
    return {r["run_dir"]: r["job_id"] for r in json.loads(record.read_text())["runs"]}


@pytest.mark.timeout(600)
def test_a_preempted_pack_stops_and_requeues_all_its_runs_which_match_uninterrupted_ones(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    # 4 points in 2 tasks of 2 runs: task 0 trains seeds 0 and 1 logging every 5 steps and is preempted; task 1
    # trains the same seeds logging every 6 steps (which changes nothing the run computes), uninterrupted.
    recipe = [o for o in tiny if not o.startswith("trainer.log_every_steps=")]
    command = [*cpu_args(slurm_env, tmp_path, nodes=1), "--runs-per-gpu", "2", "--job-name", "pack", "-m", *recipe,
               "trainer.epochs=2", "trainer.log_every_steps=5,6", "seed=0,1"]
    assert submit.main([*command, "--dry-run"]) == []
    out = capsys.readouterr().out
    assert "# packing: 4 runs in 2 array tasks, 2 CPU runs per task" in out
    assert "#SBATCH --array=0-1%" in out and "#SBATCH --ntasks-per-node=1" in out
    assert len(re.findall(r"^# task 0, CPU: .*/log_every_steps=5_seed=\d: ", out, re.M)) == 2

    jobs = submit.main(command)
    assert len(jobs) == 2 and len({j.job_id.split("_")[0] for j in jobs}) == 1
    [sweep] = tmp_path.glob("pack-*")
    preempted = [sweep / f"log_every_steps=5_seed={s}" for s in (0, 1)]
    reference = [sweep / f"log_every_steps=6_seed={s}" for s in (0, 1)]
    assert launched_jobs(tmp_path) == {str(d): j.job_id for j, ds in zip(jobs, (preempted, reference), strict=True)
                                       for d in ds}  # each run its row, with its pack's array task as its job

    wait_for(lambda: all(logged_step(d) >= 10 for d in preempted), 300, "both runs of task 0 to train 10 steps")
    slurm_env.run("scancel", "--signal=USR2", jobs[0].job_id)
    assert finish(jobs[0], timeout_s=400) == "COMPLETED"
    assert finish(jobs[1], timeout_s=120) == "COMPLETED"
    assert restart_count(slurm_env, jobs[0].job_id) == 1
    assert restart_count(slurm_env, jobs[1].job_id) == 0
    for run_dir in preempted:
        log = run_log(run_dir)
        stopped = re.search(r"checkpointed at global step (\d+)", log)
        resumed = re.search(r"resumed from .* global step (\d+)", log)
        assert stopped and resumed and stopped.group(1) == resumed.group(1), log
        assert 10 <= int(stopped.group(1)) < 88  # mid-run: two epochs of 44 steps
    for run_dir in reference:
        assert "resumed from" not in run_log(run_dir)
    for pre, ref in zip(preempted, reference, strict=True):
        for run_dir in (pre, ref):
            results = json.loads((run_dir / "results.json").read_text())
            assert (results["status"], results["global_step"], results["world_size"]) == ("completed", 88, 1)
        final_pre, final_ref = read_weights(str(pre / "student.pt"))[0], read_weights(str(ref / "student.pt"))[0]
        assert final_pre.keys() == final_ref.keys()
        assert all(torch.equal(final_pre[k], final_ref[k]) for k in final_ref)
    capsys.readouterr()
    assert status([str(sweep)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("4 runs: 4 done")


@pytest.mark.timeout(600)
def test_a_run_that_fails_leaves_its_pack_mates_training(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    [job] = submit.main([*cpu_args(slurm_env, tmp_path, nodes=1), "--runs-per-gpu", "2", "--job-name", "mates",
                         "-m", *tiny, "trainer.epochs=2", "seed=0,1"])
    [sweep] = tmp_path.glob("mates-*")
    victim, mate = sweep / "seed=0", sweep / "seed=1"
    wait_for(lambda: logged_step(victim) >= 5 and live_holder(victim) is not None, 300, "the victim to train")
    holder = live_holder(victim)
    assert holder is not None
    os.kill(holder.pid, signal.SIGKILL)  # what the OOM killer does: no Python left to say why

    assert finish(job, timeout_s=400) == "FAILED"  # the task's exit status says a run failed
    results = json.loads((mate / "results.json").read_text())
    assert (results["status"], results["global_step"]) == ("completed", 88)
    failed = json.loads((victim / "results.json").read_text())
    assert (failed["status"], failed["error"], failed["job_id"]) == ("failed", "killed by SIGKILL", job.job_id)
    assert f"{victim}: failed: killed by SIGKILL" in Path(job.paths.stderr).read_text()

    capsys.readouterr()
    assert status([str(sweep)]) == 1
    table = capsys.readouterr().out
    assert re.search(r"^seed=0 +failed .*\n +error: killed by SIGKILL$", table, re.M), table
    assert re.search(r"^seed=1 +done ", table, re.M) and table.rstrip().endswith("2 runs: 1 done, 1 failed")
    assert status([str(sweep), "--failed"]) == 1  # the command that resubmits the failed run, packed again
    [command] = capsys.readouterr().out.splitlines()
    assert "--runs-per-gpu 2" in command and command.endswith(f"--resume {victim}")


def test_only_single_process_runs_are_packed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--folder", str(tmp_path), "--runs-per-gpu", "2", "--time", "5", *TINY, "method=ce", "teacher=none"]
    for extra, says in ((["--gpus", "1", "--nodes", "2"], "--nodes 2 asks for multi-node (DDP) runs"),
                        (["--gpus", "0", "--tasks-per-node", "2"], "--tasks-per-node 2 asks for multi-process"),
                        (["--gpus", "0", "--local"], "with --local, run them side by side with --parallel 2")):
        err = refused([*extra, *base], capsys)
        assert err.startswith("error: --runs-per-gpu 2 ") and says in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing planned, nothing written
