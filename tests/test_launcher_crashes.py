"""Crashes of SLURM jobs on the local cluster: a crash requeues the job and it resumes from its newest checkpoint, a
crash that keeps coming back fails the job after --max-failures, a failure of rank 1 ends the job at once and is
the one recorded cause, a user error fails without a requeue; and the records and the batch script's teardown that
decide it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launchers import submit
from pekd.cluster.launch import (
    FAILURES_FILE,
    ExitRecord,
    FailureRecord,
    batch_teardown,
    export_rendezvous,
    failure_summary,
    newest_checkpoint_step,
    srun_status_text,
)
from slurm.local_cluster import LocalCluster
from tests.launcher_helpers import cpu_args, finish, restart_count, run_log
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401 (fixtures)
from tests.train_helpers import TINY

pytestmark = pytest.mark.slow


# A run that crashes for real: one DataLoader worker per task, killed with SIGKILL the way the kernel's OOM killer
# kills a process. The training process then raises RuntimeError "DataLoader worker (pid N) is killed by signal"
# (or "... exited unexpectedly" from that) - an ordinary exception, which pekd.cluster.launch answers by requeueing
# the job.
# 8 epochs of 44 steps, a checkpoint every 5 steps: long enough to crash mid-run after a checkpoint.
CRASHY = [*TINY, "method=ce", "teacher=none", "data.workers=1", "trainer.epochs=8", "trainer.ckpt_every_steps=5"]
CRASHY_STEPS = 8 * 44


def _task_processes(job_id: str) -> dict[int, tuple[int, str]]:
    """This job's live Python processes on this host, from /proc: pid -> (parent pid, SLURM restart count).

    The task (submitit's runner, under slurmstepd) and the DataLoader workers it forks share its command line and
    environment, so a worker is a match whose parent is one too.
    """
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if (not argv[0].rsplit(b"/", 1)[-1].startswith(b"python") or b"submitit.core._submit" not in argv
                or f"SLURM_JOB_ID={job_id}".encode() not in environ or stat[0] in ("Z", "X")):
            continue
        restarts = [e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"SLURM_RESTART_COUNT=")]
        found[int(entry.name)] = (int(stat[1]), restarts[0] if restarts else "0")
    return found


def _loader_workers(job_id: str) -> dict[int, str]:
    """DataLoader worker pid -> the start (SLURM restart count) of the job it belongs to."""
    procs = _task_processes(job_id)
    return {pid: start for pid, (parent, start) in procs.items() if parent in procs}


def _steps_logged(log: str) -> list[tuple[int, str]]:
    """(global step, loss) of every training log line, in order."""
    return [(int(g), loss) for g, loss in re.findall(r"\(global (\d+)\): loss (\S+)", log)]


def test_a_crash_requeues_the_job_and_it_resumes_from_its_newest_checkpoint(
    slurm_env: LocalCluster, tmp_path: Path  # noqa: F811
) -> None:
    run_dir = tmp_path / "run"
    [job] = submit.main([*cpu_args(slurm_env, tmp_path, nodes=1), *CRASHY, f"run_dir={run_dir}"])
    wait_for(lambda: any((run_dir / "checkpoints").glob("ckpt-*.pt")), 120, "a first checkpoint")
    procs = _task_processes(job.job_id)
    [trainer] = [pid for pid, (parent, _) in procs.items() if parent not in procs]
    workers = _loader_workers(job.job_id)  # the training loader's (and from the first eval on, the eval loader's)
    assert workers and set(workers.values()) == {"0"}
    os.kill(min(workers), signal.SIGKILL)
    wait_for(lambda: trainer not in _task_processes(job.job_id), 60, "the crashed training process to exit")
    # Nothing else writes checkpoints until the requeued job starts (seconds later): this is what it must find.
    newest = newest_checkpoint_step(run_dir)
    assert finish(job) == "COMPLETED"

    assert restart_count(slurm_env, job.job_id) == 1
    log = run_log(run_dir)
    assert re.search(rf"job {job.job_id} crashed \(1 of at most 3 times without a new checkpoint\): .*; "
                     r"requeueing\nTraceback", log), log
    first, _, second = log.partition("resumed from ")
    assert re.fullmatch(rf"\S+/ckpt-0*{newest}\.pt: epoch {newest // 44}, step {newest % 44} of the epoch, "
                        rf"global step {newest}", second.split("\n", 1)[0]), second[:300]
    assert "resumed from" not in second  # one restart, one resume
    before, after = dict(_steps_logged(first)), _steps_logged(second)
    assert 0 < newest <= max(before) < CRASHY_STEPS  # the crash came after the checkpoint, mid-run
    assert [g for g, _ in after] == list(range(newest + 1, CRASHY_STEPS + 1))  # on from the checkpoint's step
    # Deterministic training: steps the crashed start had already done (after its checkpoint) come out the same.
    assert all(before[g] == loss for g, loss in after if g in before)
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["global_step"], results["epoch"]) == ("completed", CRASHY_STEPS, 8)
    assert not (tmp_path / "submitit" / job.job_id / FAILURES_FILE).exists()  # a finished run starts counting over

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert len(steps) == len(set(steps)), "the crashed start's steps after the checkpoint are purged, not doubled"
    assert sorted(steps) == list(range(1, CRASHY_STEPS + 1)), "every step once, the checkpoint's own included"
    assert [e.step for e in acc.Scalars("val/top1")] == [44 * (e + 1) for e in range(8)]


def test_a_crash_that_keeps_coming_back_fails_the_job_after_max_failures(
    slurm_env: LocalCluster, tmp_path: Path  # noqa: F811
) -> None:
    # The same crash in every start, before the start gets anywhere: its loader worker OOM-killed as soon as it
    # appears. The exception it surfaces as depends on timing (killed by signal, exited unexpectedly, connection
    # reset): what counts is that no checkpoint was written in between.
    run_dir = tmp_path / "run"
    args = [*cpu_args(slurm_env, tmp_path, nodes=1), "--max-failures", "2"]
    slow_epochs = ["data.batch_size=8", "trainer.ckpt_every_steps=0"]  # 180 steps before the first checkpoint
    [job] = submit.main([*args, *CRASHY, *slow_epochs, f"run_dir={run_dir}"])
    # Starts whose loader worker was killed. At most 3: a job that requeues on and on completes in its 4th start and
    # fails the test, instead of looping until the test times out.
    crashed: set[str] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for _ in range(50):  # scan /proc often (a worker dies within ~20 ms of appearing), ask SLURM now and then
            for pid, start in _loader_workers(job.job_id).items():
                if start not in crashed and len(crashed) < 3:
                    os.kill(pid, signal.SIGKILL)
                    crashed.add(start)
            time.sleep(0.02)
        if job.watcher.is_done(job.job_id, mode="force"):
            break
    log = run_log(run_dir)
    assert job.watcher.get_state(job.job_id, mode="cache") == "FAILED", log
    assert not list((run_dir / "checkpoints").glob("ckpt-*.pt")), "a start got to a checkpoint before its crash"
    record = json.loads((tmp_path / "submitit" / job.job_id / FAILURES_FILE).read_text())
    assert (record["count"], record["step"]) == (2, -1), record
    assert re.search(rf"job {job.job_id} crashed 2 times in a row without a new checkpoint \(newest: step -1\), "
                     rf"last with {re.escape(record['error'])}; not requeueing\nTraceback", log), log
    assert log.count(f"job {job.job_id} crashed (1 of at most 2 times without a new checkpoint): ") == 1
    assert crashed == {"0", "1"} and restart_count(slurm_env, job.job_id) == 1  # requeued once, then failed for good
    results = json.loads((run_dir / "results.json").read_text())  # the run directory says so too (pekd.report)
    assert (results["status"], results["error"], results["job_id"]) == ("failed", record["error"], job.job_id)


def _slurm_rank(pid: int) -> int:
    """The global rank (SLURM_PROCID) a task process, or a DataLoader worker it forked, runs as."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in environ if e.startswith(b"SLURM_PROCID=")).split(b"=", 1)[1])


def _wait_for_requeue(cluster: LocalCluster, job_id: str, restarts: int, what: str) -> float:
    """Seconds until SLURM has requeued the job `restarts` times in all (timed from now)."""
    start = time.monotonic()
    wait_for(lambda: restart_count(cluster, job_id) >= restarts, 60, f"the job to be requeued after {what}")
    took = time.monotonic() - start
    print(f"\n{what} -> requeue: {took:.1f} s")
    return took


def test_a_failure_of_rank_1_ends_the_job_at_once_and_requeues_it(
    slurm_env: LocalCluster, tmp_path: Path  # noqa: F811
) -> None:
    # Two nodes x one task. Start 0: rank 1's loader worker is OOM-killed, so rank 1 raises (before, only rank 0
    # requeued a job, and a crash of another rank failed it). Start 1: rank 1's training process itself is
    # SIGKILLed, so no Python is left on rank 1 to say anything. Each time srun's --kill-on-bad-exit ends rank 0
    # too and the batch script requeues the job once; each start resumes from the newest checkpoint.
    run_dir = tmp_path / "run"
    steps = 4 * 44
    recipe = [*CRASHY, "trainer.epochs=4"]
    [job] = submit.main([*cpu_args(slurm_env, tmp_path), *recipe, f"run_dir={run_dir}"])
    wait_for(lambda: any((run_dir / "checkpoints").glob("ckpt-*.pt")), 120, "a first checkpoint")
    [worker] = [pid for pid, start in _loader_workers(job.job_id).items() if _slurm_rank(pid) == 1 and start == "0"]
    os.kill(worker, signal.SIGKILL)
    assert _wait_for_requeue(slurm_env, job.job_id, 1, "rank 1's loader worker killed") < 60
    first_newest = newest_checkpoint_step(run_dir)

    def resumed_twice_and_checkpointed() -> bool:
        return run_log(run_dir).count("resumed from ") == 1 and newest_checkpoint_step(run_dir) > first_newest

    wait_for(resumed_twice_and_checkpointed, 120, "start 1 to resume and write a checkpoint")
    procs = _task_processes(job.job_id)
    [trainer] = [pid for pid, (parent, start) in procs.items()
                 if parent not in procs and start == "1" and _slurm_rank(pid) == 1]
    os.kill(trainer, signal.SIGKILL)
    assert _wait_for_requeue(slurm_env, job.job_id, 2, "rank 1's training process SIGKILLed") < 60
    newest = newest_checkpoint_step(run_dir)
    assert finish(job) == "COMPLETED"

    assert restart_count(slurm_env, job.job_id) == 2  # once per failure: one batch script decides
    log = run_log(run_dir)
    verdicts = re.findall(rf"job {job.job_id} crashed \(1 of at most 3 times without a new checkpoint\): (.*); "
                          r"requeueing\n", log)
    assert len(verdicts) == 2, log
    # The cause, not rank 0's echo of it (a killed worker surfaces as one of several errors, depending on timing).
    assert verdicts[0].startswith("rank 1: "), verdicts
    # Rank 1 left no word; rank 0 may have raised (its connection to rank 1 reset) before srun killed it.
    assert verdicts[1].endswith("(srun exit status 137: a task was killed by SIGKILL)"), verdicts
    resumes = re.findall(r"resumed from \S+/ckpt-0*(\d+)\.pt", log)
    assert [int(r) for r in resumes] == [first_newest, newest], resumes
    last = log.rpartition("resumed from ")[2]
    assert [g for g, _ in _steps_logged(last)] == list(range(newest + 1, steps + 1))
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["global_step"], results["world_size"]) == ("completed", steps, 2)
    assert not list((tmp_path / "submitit" / job.job_id).glob("pekd_exit.*"))  # records read and removed


def test_a_user_error_on_every_rank_fails_the_job_without_a_requeue(
    slurm_env: LocalCluster, tmp_path: Path  # noqa: F811
) -> None:
    # a weights file that exists (so the checks before the queue pass) but fits no resnet8: every rank's start fails
    run_dir = tmp_path / "run"
    alien = tmp_path / "alien-weights.pt"
    torch.save({"bogus.weight": torch.zeros(3)}, alien)
    [job] = submit.main([*cpu_args(slurm_env, tmp_path), *TINY, "method=ce", "teacher=none",
                         f"model.weights={alien}", f"run_dir={run_dir}"])
    assert finish(job) == "FAILED"
    assert restart_count(slurm_env, job.job_id) == 0
    stderr = job.paths.stderr.read_text()  # task 0's, where the batch script also writes
    assert f"checkpoint {alien} does not fit model resnet8" in stderr, stderr[-3000:]
    assert "requeueing" not in stderr and "crashed" not in stderr
    assert not (tmp_path / "submitit" / job.job_id / FAILURES_FILE).exists()  # not counted as a crash


def test_the_first_failure_of_a_start_is_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert ExitRecord("crash", 1, "RuntimeError: worker killed", "Traceback ...").claim(tmp_path)
    assert not ExitRecord("crash", 0, "RuntimeError: connection reset by peer").claim(tmp_path)  # its echo
    assert ExitRecord.load(tmp_path) == ExitRecord("crash", 1, "RuntimeError: worker killed", "Traceback ...")
    assert [p.name for p in tmp_path.iterdir()] == ["pekd_exit.2.json"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert ExitRecord.load(tmp_path) is None  # a later start is not spoken for
    assert srun_status_text(137) == "srun exit status 137: a task was killed by SIGKILL"
    assert srun_status_text(1) == "srun exit status 1"


def test_the_sbatch_script_kills_every_task_on_a_bad_exit_and_then_decides_once(
    slurm_env: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    submit.main(["--dry-run", *cpu_args(slurm_env, tmp_path), *TINY, "method=ce", "teacher=none"])
    script = capsys.readouterr().out
    command, teardown = script.split("\n# command\n", 1)[1].split("\n# teardown\n", 1)
    [srun] = [line for line in command.splitlines() if line.startswith("srun ")]
    assert "--kill-on-bad-exit=1" in srun.split()
    folder = tmp_path.resolve() / "submitit" / "%j"
    assert teardown.splitlines() == batch_teardown(sys.executable, folder)
    assert teardown.startswith("pekd_status=$?")
    assert f"-m pekd.cluster.launch after-srun \"$pekd_status\" {folder}" in teardown


def test_the_cause_of_a_failure_is_the_bottom_of_its_chain() -> None:
    killed = RuntimeError("DataLoader worker (pid 4453) is killed by signal: Killed. \nmore")
    try:
        raise RuntimeError("DataLoader worker (pid(s) 4453) exited unexpectedly") from killed
    except RuntimeError as wrapped:
        assert failure_summary(wrapped) == "RuntimeError: DataLoader worker (pid 4453) is killed by signal: Killed. "
    assert failure_summary(OSError("disk full")) == "OSError: disk full"


def test_crashes_count_up_until_a_new_checkpoint_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "failures.json"
    assert FailureRecord.load(path).add(-1, "RuntimeError: worker killed") == 1  # before any checkpoint
    assert FailureRecord.load(path).add(-1, "ConnectionResetError: reset by peer") == 2  # same cause, other face
    assert FailureRecord.load(path).add(40, "RuntimeError: worker killed") == 1  # it got somewhere in between
    assert FailureRecord.load(path).add(40, "OSError: disk full") == 2
    FailureRecord.load(path).clear()
    assert FailureRecord.load(path).count == 0


def test_every_restart_meets_at_a_fresh_port(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "127.0.0.[1-2]",
           "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    # export_rendezvous() writes RANK/WORLD_SIZE/MASTER_*: give it a private copy of the environment so nothing
    # leaks into later tests (their training subprocesses would otherwise wait for a world that never comes).
    private = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE",
                                                                "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    monkeypatch.setattr(os, "environ", {**private, **env})
    ports = []
    for restart in ("0", "1"):
        os.environ["SLURM_RESTART_COUNT"] = restart
        export_rendezvous()
        ports.append(os.environ["MASTER_PORT"])
        assert (os.environ["MASTER_ADDR"], os.environ["RANK"], os.environ["WORLD_SIZE"]) == ("127.0.0.1", "1", "2")
    assert ports[0] != ports[1]


