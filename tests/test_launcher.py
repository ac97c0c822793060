"""launchers/submit.py against the local SLURM cluster: two-task gloo runs, preemption, time limits, crashes that
requeue (and a crash that keeps coming back, which must not), sweeps as job arrays, bad input refused before
anything is submitted; and --local (submitit's LocalExecutor, no SLURM).

Runs are tiny (8x8 digits, resnet8 student and a random resnet8 teacher, one thread per task): what is tested is
the plumbing - requeue, resume, rendezvous - not the learning.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pekd.errors import PekdError
from pekd.launch import (
    FAILURES_FILE,
    ExitRecord,
    FailureRecord,
    batch_teardown,
    export_rendezvous,
    failure_summary,
    newest_checkpoint_step,
    srun_status_text,
)
from pekd.models import read_weights
from pekd.sbatch import DEFAULT_ARRAY_PARALLELISM, gres_gpus, pass_through, slurm_minutes
from pekd.train import compose_config
from slurm.local_cluster import LocalCluster
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401
from tests.train_helpers import TINY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _load_submit() -> ModuleType:
    """launchers/ is a script folder, not a package; load it like `python launchers/submit.py` would."""
    spec = importlib.util.spec_from_file_location("pekd_submit", ROOT / "launchers" / "submit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


submit = _load_submit()


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


def _cpu_args(cluster: LocalCluster, folder: Path | str, nodes: int = 2, minutes: int = 10) -> list[str]:
    return ["--folder", str(folder), "--gpus", "0", "--nodes", str(nodes), "--partition", cluster.partition,
            "--time", str(minutes)]


def _finish(job, timeout_s: float = 240) -> str:
    """Wait for the job to leave the queue for good; returns SLURM's final state."""
    wait_for(lambda: job.watcher.is_done(job.job_id, mode="force"), timeout_s, f"job {job.job_id}")
    return job.watcher.get_state(job.job_id, mode="cache")


def _log(run_dir: Path) -> str:
    return (run_dir / "logs" / "rank0.log").read_text()


def test_preempted_two_task_run_resumes_and_matches_uninterrupted(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    recipe = [*tiny, "trainer.epochs=1"]
    ref_dir, pre_dir = tmp_path / "reference", tmp_path / "preempted"
    [reference] = submit.main([*_cpu_args(slurm_env, tmp_path), *recipe, f"run_dir={ref_dir}"])
    [preempted] = submit.main([*_cpu_args(slurm_env, tmp_path), *recipe, f"run_dir={pre_dir}"])

    wait_for(lambda: "step 10/" in (_log(pre_dir) if (pre_dir / "logs" / "rank0.log").exists() else ""),
              120, "the run to train a few steps")
    slurm_env.run("scancel", "--signal=USR2", preempted.job_id)
    assert _finish(preempted) == "COMPLETED"
    assert _finish(reference) == "COMPLETED"

    log = _log(pre_dir)
    stopped = re.search(r"checkpointed at global step (\d+)", log)
    resumed = re.search(r"resumed from .* global step (\d+)", log)
    assert stopped and resumed and stopped.group(1) == resumed.group(1), log
    assert 0 < int(stopped.group(1)) < 44  # mid-run: one epoch of 44 steps
    for run_dir in (ref_dir, pre_dir):
        assert (run_dir / "results.json").read_text().count('"status": "completed"') == 1
        assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    final_ref = read_weights(str(ref_dir / "student.pt"))[0]
    final_pre = read_weights(str(pre_dir / "student.pt"))[0]
    assert final_ref.keys() == final_pre.keys()
    assert all(torch.equal(final_ref[k], final_pre[k]) for k in final_ref)


@pytest.mark.timeout(900)  # its own wait for the job is 800 s: several 1-minute starts on a loaded machine
def test_time_limit_shorter_than_run_requeues_until_done(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    # slurmctld checks limits every 30 s and sends the warning signal once the time left is under the delay
    # plus 30 s: with a one-minute limit and a 5 s delay, USR2 lands 25-55 s into each start (after the
    # trainer is up) and the kill would come one check later. 150 epochs of digits are about 100 s of training on
    # a fast, idle machine (60 took 39 s), so at least two starts are needed; a loaded machine needs more of them.
    run_dir = tmp_path / "run"
    args = [*_cpu_args(slurm_env, tmp_path, nodes=1, minutes=1), "--signal-delay", "5"]
    [job] = submit.main([*args, *tiny, "trainer.epochs=150", f"run_dir={run_dir}"])
    assert _finish(job, timeout_s=800) == "COMPLETED"
    log = _log(run_dir)
    assert "received SIGUSR2" in log and "resumed from" in log
    assert '"status": "completed"' in (run_dir / "results.json").read_text()


def test_sweep_is_one_job_array_and_report_summarises_it(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    from pekd.report import main as report

    jobs = submit.main([*_cpu_args(slurm_env, tmp_path, nodes=1), "--job-name", "sweep", "-m", *tiny,
                        "trainer.epochs=1", "method.beta=5,25", "method.q=1,3"])
    assert len(jobs) == 4 and len({j.job_id.split("_")[0] for j in jobs}) == 1
    assert all(_finish(j) == "COMPLETED" for j in jobs)
    [sweep_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("sweep-")]
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["beta=25_q=1", "beta=25_q=3", "beta=5_q=1",
                                                           "beta=5_q=3"]
    report([str(sweep_dir)])
    table = (sweep_dir / "report.md").read_text()
    for label in ("| beta=5.0 q=1 |", "| beta=5.0 q=3 |", "| beta=25.0 q=1 |", "| beta=25.0 q=3 |"):
        assert label in table
    assert "| 1/1 |" in table and "Incomplete" not in table
    assert (sweep_dir / "report.png").stat().st_size > 0


# A run that crashes for real: one DataLoader worker per task, killed with SIGKILL the way the kernel's OOM killer
# kills a process. The training process then raises RuntimeError "DataLoader worker (pid N) is killed by signal"
# (or "... exited unexpectedly" from that) - an ordinary exception, which pekd.launch answers by requeueing the job.
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


def _restarts(cluster: LocalCluster, job_id: str) -> int:
    """How often SLURM requeued the job (same job id, next start)."""
    found = re.search(r"\bRestarts=(\d+)", cluster.run("scontrol", "show", "job", job_id).stdout)
    assert found, f"scontrol knows no job {job_id}"
    return int(found.group(1))


def _steps_logged(log: str) -> list[tuple[int, str]]:
    """(global step, loss) of every training log line, in order."""
    return [(int(g), loss) for g, loss in re.findall(r"\(global (\d+)\): loss (\S+)", log)]


def test_a_crash_requeues_the_job_and_it_resumes_from_its_newest_checkpoint(
    slurm_env: LocalCluster, tmp_path: Path  # noqa: F811
) -> None:
    run_dir = tmp_path / "run"
    [job] = submit.main([*_cpu_args(slurm_env, tmp_path, nodes=1), *CRASHY, f"run_dir={run_dir}"])
    wait_for(lambda: any((run_dir / "checkpoints").glob("ckpt-*.pt")), 120, "a first checkpoint")
    procs = _task_processes(job.job_id)
    [trainer] = [pid for pid, (parent, _) in procs.items() if parent not in procs]
    workers = _loader_workers(job.job_id)  # the training loader's (and from the first eval on, the eval loader's)
    assert workers and set(workers.values()) == {"0"}
    os.kill(min(workers), signal.SIGKILL)
    wait_for(lambda: trainer not in _task_processes(job.job_id), 60, "the crashed training process to exit")
    # Nothing else writes checkpoints until the requeued job starts (seconds later): this is what it must find.
    newest = newest_checkpoint_step(run_dir)
    assert _finish(job) == "COMPLETED"

    assert _restarts(slurm_env, job.job_id) == 1
    log = _log(run_dir)
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
    args = [*_cpu_args(slurm_env, tmp_path, nodes=1), "--max-failures", "2"]
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
    log = _log(run_dir)
    assert job.watcher.get_state(job.job_id, mode="cache") == "FAILED", log
    assert not list((run_dir / "checkpoints").glob("ckpt-*.pt")), "a start got to a checkpoint before its crash"
    record = json.loads((tmp_path / "submitit" / job.job_id / FAILURES_FILE).read_text())
    assert (record["count"], record["step"]) == (2, -1), record
    assert re.search(rf"job {job.job_id} crashed 2 times in a row without a new checkpoint \(newest: step -1\), "
                     rf"last with {re.escape(record['error'])}; not requeueing\nTraceback", log), log
    assert log.count(f"job {job.job_id} crashed (1 of at most 2 times without a new checkpoint): ") == 1
    assert crashed == {"0", "1"} and _restarts(slurm_env, job.job_id) == 1  # requeued once, then failed for good
    results = json.loads((run_dir / "results.json").read_text())  # the run directory says so too (pekd.report)
    assert (results["status"], results["error"], results["job_id"]) == ("failed", record["error"], job.job_id)


def _slurm_rank(pid: int) -> int:
    """The global rank (SLURM_PROCID) a task process, or a DataLoader worker it forked, runs as."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(e for e in environ if e.startswith(b"SLURM_PROCID=")).split(b"=", 1)[1])


def _wait_for_requeue(cluster: LocalCluster, job_id: str, restarts: int, what: str) -> float:
    """Seconds until SLURM has requeued the job `restarts` times in all (timed from now)."""
    start = time.monotonic()
    wait_for(lambda: _restarts(cluster, job_id) >= restarts, 60, f"the job to be requeued after {what}")
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
    [job] = submit.main([*_cpu_args(slurm_env, tmp_path), *recipe, f"run_dir={run_dir}"])
    wait_for(lambda: any((run_dir / "checkpoints").glob("ckpt-*.pt")), 120, "a first checkpoint")
    [worker] = [pid for pid, start in _loader_workers(job.job_id).items() if _slurm_rank(pid) == 1 and start == "0"]
    os.kill(worker, signal.SIGKILL)
    assert _wait_for_requeue(slurm_env, job.job_id, 1, "rank 1's loader worker killed") < 60
    first_newest = newest_checkpoint_step(run_dir)

    def resumed_twice_and_checkpointed() -> bool:
        return _log(run_dir).count("resumed from ") == 1 and newest_checkpoint_step(run_dir) > first_newest

    wait_for(resumed_twice_and_checkpointed, 120, "start 1 to resume and write a checkpoint")
    procs = _task_processes(job.job_id)
    [trainer] = [pid for pid, (parent, start) in procs.items()
                 if parent not in procs and start == "1" and _slurm_rank(pid) == 1]
    os.kill(trainer, signal.SIGKILL)
    assert _wait_for_requeue(slurm_env, job.job_id, 2, "rank 1's training process SIGKILLed") < 60
    newest = newest_checkpoint_step(run_dir)
    assert _finish(job) == "COMPLETED"

    assert _restarts(slurm_env, job.job_id) == 2  # once per failure: one batch script decides
    log = _log(run_dir)
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
    [job] = submit.main([*_cpu_args(slurm_env, tmp_path), *TINY, "method=ce", "teacher=none",
                         f"model.weights={alien}", f"run_dir={run_dir}"])
    assert _finish(job) == "FAILED"
    assert _restarts(slurm_env, job.job_id) == 0
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
    submit.main(["--dry-run", *_cpu_args(slurm_env, tmp_path), *TINY, "method=ce", "teacher=none"])
    script = capsys.readouterr().out
    command, teardown = script.split("\n# command\n", 1)[1].split("\n# teardown\n", 1)
    [srun] = [line for line in command.splitlines() if line.startswith("srun ")]
    assert "--kill-on-bad-exit=1" in srun.split()
    folder = tmp_path.resolve() / "submitit" / "%j"
    assert teardown.splitlines() == batch_teardown(sys.executable, folder)
    assert teardown.startswith("pekd_status=$?") and f"-m pekd.launch after-srun \"$pekd_status\" {folder}" in teardown


def test_the_cause_of_a_failure_is_the_bottom_of_its_chain() -> None:
    killed = RuntimeError("DataLoader worker (pid 4453) is killed by signal: Killed. \nmore")
    try:
        raise RuntimeError("DataLoader worker (pid(s) 4453) exited unexpectedly") from killed
    except RuntimeError as wrapped:
        assert failure_summary(wrapped) == "RuntimeError: DataLoader worker (pid 4453) is killed by signal: Killed. "
    assert failure_summary(OSError("disk full")) == "OSError: disk full"


def test_local_executor_runs_a_job_without_slurm(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    [job] = submit.main(["--local", "--folder", str(tmp_path), "--gpus", "0", "--time", "5", *TINY, "method=ce",
                         "teacher=none", "trainer.epochs=2", f"run_dir={run_dir}"])
    assert type(job).__name__ == "LocalJob"
    returned = job.result()  # waits; raises with the job's traceback if it failed
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == returned["status"] == "completed"
    assert (results["global_step"], results["epoch"], results["world_size"]) == (88, 2, 1)
    assert results["last_top1"] > 50.0  # digits: chance is 10%
    assert (run_dir / "student.pt").is_file()
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 89))
    assert [e.step for e in acc.Scalars("val/top1")] == [44, 88]
    assert acc.Scalars("val/top1")[-1].value == pytest.approx(results["last_top1"], abs=1e-3)
    assert json.loads((tmp_path / "launches" / f"{job.job_id}.json").read_text())["runs"][0]["run_dir"] == \
        str(run_dir)


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        submit.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_input_is_refused_before_submission(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    def queued() -> str:
        return slurm_env.run("squeue", "-h", "-o", "%i").stdout

    before = queued()
    args = _cpu_args(slurm_env, tmp_path)
    assert "unknown partition 'nope'; sinfo lists: debug" in _refused(
        [*args, "--partition", "nope", *tiny], capsys)
    assert "--time 2000 exceeds the 1440-minute limit of partition 'debug'" in _refused(
        [*args, "--time", "2000", *tiny], capsys)
    assert "--gpus 0, but an ImageNet-scale recipe" in _refused([*args, "experiment=imagenet_r34_r18"], capsys)
    assert "trainer.no_such_key" in _refused([*args, *tiny, "trainer.no_such_key=1"], capsys)
    assert "is not writable" in _refused([*_cpu_args(slurm_env, "/proc/pekd-runs"), *tiny], capsys)

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(OmegaConf.to_yaml(compose_config([*tiny, "method.beta=5"])))
    assert "holds a run of another config (differs in method.beta)" in _refused(
        [*args, *tiny, f"run_dir={other}"], capsys)
    assert queued() == before


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


@pytest.mark.parametrize("text, minutes", [("infinite", None), ("30", 30), ("30:00", 30), ("12:00:00", 720),
                                           ("1-12", 2160), ("2-12:30:00", 3630), ("24:00:00", 1440),
                                           ("1-00:00:00", 1440), ("10:30", 11), ("0:0:30", 1)])
def test_slurm_time_limits_read_as_minutes(text: str, minutes: int | None) -> None:
    assert slurm_minutes(text) == minutes


def test_time_strings_and_gres_counts_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert submit.parse_args(["--time", "1-00:00:00"]).time == 1440
    assert submit.parse_args(["--time", "24:00:00"]).time == submit.parse_args(["--time", "1440"]).time
    for bad in ("1 day", "0", "infinite"):
        with pytest.raises(PekdError, match="--time"):
            submit.parse_args(["--time", bad])
    assert (gres_gpus("gpu:a100:8"), gres_gpus("gpu:2,nvme:1"), gres_gpus("gpu"), gres_gpus("nvme:1")) == \
        (8, 2, 1, None)
    with pytest.raises(PekdError, match="submit.py sets --time itself"):
        pass_through(["time=10"])


def _preview(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """submit.py --dry-run on a machine with no SLURM at all: no srun, no sinfo, no slurm.conf."""
    empty = tmp_path / "no-slurm-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("SLURM_CONF", raising=False)
    capsys.readouterr()
    code = 0
    try:
        submit.main(["--dry-run", "--folder", str(tmp_path / "runs"), "--gpus", "0", *argv])
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_previews_the_script_with_every_site_option_and_no_controller(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _preview(["--time", "1-00:00:00", "--setup", "module load cuda/12.4", "--setup",
                               "source /shared/venv/bin/activate", "--gres", "tmpdisk:10", "--array-parallelism",
                               "3", "--after", "1234", "--sbatch", "mail-type=END", "--sbatch", "exclusive", "-m",
                               *TINY, "method=ce", "teacher=none", "seed=0,1,2,3,4"], tmp_path, monkeypatch, capsys)
    assert code == 0, err
    assert "# not checked: partition (default) and its time limit: no SLURM controller answers sinfo here" in out
    assert "# not checked: that job(s) 1234 exist" in out
    script = out[out.index("#!/bin/bash"):]
    for line in ("#SBATCH --time=1440", "#SBATCH --gres=tmpdisk:10", "#SBATCH --array=0-4%3",
                 "#SBATCH --dependency=afterok:1234", "#SBATCH --mail-type=END", "#SBATCH --exclusive"):
        assert line in script.splitlines(), line
    setup = script.split("\n# setup\n", 1)[1].split("\n\n", 1)[0]
    assert setup.splitlines() == ["module load cuda/12.4", "source /shared/venv/bin/activate"]
    assert script.index("# setup") < script.index("srun ")
    assert not (tmp_path / "runs").exists()  # a preview creates nothing
    # the default array cap is modest: a 200-point sweep does not ask for 200 allocations at once
    code, out, err = _preview([*TINY, "method=ce", "teacher=none", "-m", "seed=range(200)"], tmp_path, monkeypatch,
                              capsys)
    assert code == 0, err
    assert f"#SBATCH --array=0-199%{DEFAULT_ARRAY_PARALLELISM}" in out.splitlines()


def test_missing_inputs_are_one_error_line_each_before_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _preview(["model.name=resnet1100", "teacher.name=resnet8", "teacher.weights=/nonexistent.pth",
                               "data=cifar100", f"data.root={tmp_path / 'no-data'}"], tmp_path, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert all(line.startswith("error: ") for line in lines) and len(lines) == 3, err
    assert "model.name: unknown model 'resnet1100'" in lines[0] and "resnet110" in lines[0]
    assert "teacher.weights='/nonexistent.pth' does not exist" in lines[1]
    assert "no-data" in lines[2] and "cifar-100-python" in lines[2]
    code, out, err = _preview([*TINY, "teacher.name=resnet8", "teacher.mode=bank", f"teacher.bank={tmp_path}/bank",
                               "data.pipeline=ffcv", f"data.train_beton={tmp_path}/t.beton",
                               f"data.val_beton={tmp_path}/v.beton", "method.q=1,3", "-m"], tmp_path, monkeypatch,
                              capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 3, err  # each problem once, not once per sweep point
    assert "teacher.bank=" in lines[0] and "manifest.json" in lines[0]
    assert "data.train_beton=" in lines[1] and "data.val_beton=" in lines[2]
    # a student that waits for its teacher's job may name the file that job is to write
    code, out, err = _preview(["--after", "99", *TINY, "teacher.name=resnet8", f"teacher.weights={tmp_path}/t.pt"],
                              tmp_path, monkeypatch, capsys)
    assert code == 0 and err.startswith("note: teacher.weights=") and "error" not in err


def test_a_teacher_then_its_students_chain_themselves_with_every_site_option_honoured(
    slurm_env: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """--setup, --sbatch (pass-through) on the teacher's job; --after and --array-parallelism on the students'."""
    teacher_dir = tmp_path / "teacher"
    args = _cpu_args(slurm_env, tmp_path, nodes=1)
    before = slurm_env.run("squeue", "-h", "-o", "%i").stdout
    assert _refused([*args, *TINY, "teacher.name=resnet8", f"teacher.weights={teacher_dir}/student.pt"], capsys) \
        .startswith("error: teacher.weights=")
    assert slurm_env.run("squeue", "-h", "-o", "%i").stdout == before  # nothing queued
    [teacher] = submit.main([*args, "--time", "0:10:00", "--setup", "echo pekd-setup-line-ran", "--sbatch",
                             "comment=pekd-chain", *TINY, "method=ce", "teacher=none", "model.name=resnet8",
                             "trainer.epochs=1", f"run_dir={teacher_dir}"])
    students = submit.main([*args, "--after", teacher.job_id, "--array-parallelism", "1", "-m", *TINY,
                            "teacher.name=resnet8", f"teacher.weights={teacher_dir}/student.pt", "trainer.epochs=1",
                            "seed=0,1"])
    array_id = students[0].job_id.split("_")[0]
    shown = slurm_env.run("scontrol", "show", "job", array_id).stdout
    assert f"Dependency=afterok:{teacher.job_id}" in shown and "ArrayTaskThrottle=1" in shown
    assert "Comment=pekd-chain" in slurm_env.run("scontrol", "show", "job", teacher.job_id).stdout
    assert _finish(teacher) == "COMPLETED"
    for job in students:
        assert _finish(job) == "COMPLETED"
    assert "pekd-setup-line-ran" in Path(teacher.paths.stdout).read_text()
    made = (teacher_dir / "student.pt").stat().st_mtime
    run_dirs = sorted(tmp_path.glob("*/seed=*"))  # the sweep's folder holds one run directory per point
    assert [d.name for d in run_dirs] == ["seed=0", "seed=1"]
    starts = sorted((d / "config.yaml").stat().st_mtime for d in run_dirs)
    ends = sorted((d / "results.json").stat().st_mtime for d in run_dirs)
    assert made <= starts[0]  # the students started after the teacher wrote its export
    assert ends[0] <= starts[1]  # one array task at a time


def _cancel_when_checkpointed(cluster: LocalCluster, jobs: list, run_dirs: list[Path]) -> None:
    """scancel (a user's Ctrl-C of a cluster job: no requeue) once every run has a checkpoint to resume from."""
    for run_dir in run_dirs:
        wait_for(lambda d=run_dir: any((d / "checkpoints").glob("ckpt-*.pt")), 180, f"a checkpoint in {run_dir}")
    cluster.run("scancel", *{j.job_id.split("_")[0] for j in jobs})
    for job in jobs:
        assert _finish(job) == "CANCELLED"


def test_resume_resubmits_a_cancelled_run_with_its_own_config(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    run_dir = tmp_path / "run"
    [job] = submit.main([*_cpu_args(slurm_env, tmp_path, nodes=1), *tiny, "method=ce", "trainer.epochs=12",
                         f"run_dir={run_dir}"])
    _cancel_when_checkpointed(slurm_env, [job], [run_dir])
    assert json.loads((run_dir / "results.json").read_text())["status"] != "completed"
    [again] = submit.main([*_cpu_args(slurm_env, tmp_path, nodes=1), "--resume", str(run_dir)])
    assert _finish(again) == "COMPLETED"
    assert "resumed from" in _log(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["global_step"]) == ("completed", 12 * 44)


def test_the_same_sweep_command_resumes_its_unfinished_points_and_skips_finished_ones(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    command = [*_cpu_args(slurm_env, tmp_path, nodes=1), "--job-name", "resweep", "-m", *tiny, "method=ce",
               "trainer.epochs=12", "seed=0,1"]
    jobs = submit.main(command)
    [sweep_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("resweep-")]
    run_dirs = [sweep_dir / "seed=0", sweep_dir / "seed=1"]
    _cancel_when_checkpointed(slurm_env, jobs, run_dirs)
    again = submit.main(command)  # typed again: same folder, same run directories, resumed
    assert len(again) == 2 and all(_finish(j) == "COMPLETED" for j in again)
    assert [p for p in tmp_path.iterdir() if p.name.startswith("resweep-")] == [sweep_dir]
    for run_dir in run_dirs:
        assert "resumed from" in _log(run_dir)
        assert json.loads((run_dir / "results.json").read_text())["global_step"] == 12 * 44
    capsys.readouterr()
    assert submit.main(command) == []  # nothing left to do: nothing queued
    out = capsys.readouterr().out
    assert out.count("already completed, not submitted") == 2 and "nothing to submit" in out
