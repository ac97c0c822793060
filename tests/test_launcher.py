"""launchers/submit.py end to end on the local SLURM cluster: two-task gloo runs, preemption, time limits, sweeps
as job arrays, a teacher and its students chained, cancelled runs and sweeps resumed by the same command, bad input
refused before anything is submitted; and --local (submitit's LocalExecutor, no SLURM). Crashes and requeues:
tests/test_launcher_crashes.py; the command line and --dry-run without a controller: tests/test_launcher_cli.py.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launchers import submit
from pekd.models import read_weights
from pekd.train import compose_config
from slurm.local_cluster import LocalCluster
from tests.launcher_helpers import cpu_args, finish, refused, run_log, tiny  # noqa: F401 (a fixture)
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401 (fixtures)
from tests.train_helpers import TINY, train

pytestmark = pytest.mark.slow


def test_preempted_two_task_run_resumes_and_matches_uninterrupted(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    recipe = [*tiny, "trainer.epochs=1"]
    ref_dir, pre_dir = tmp_path / "reference", tmp_path / "preempted"
    [reference] = submit.main([*cpu_args(slurm_env, tmp_path), *recipe, f"run_dir={ref_dir}"])
    [preempted] = submit.main([*cpu_args(slurm_env, tmp_path), *recipe, f"run_dir={pre_dir}"])

    wait_for(lambda: "step 10/" in (run_log(pre_dir) if (pre_dir / "logs" / "rank0.log").exists() else ""),
              120, "the run to train a few steps")
    slurm_env.run("scancel", "--signal=USR2", preempted.job_id)
    assert finish(preempted) == "COMPLETED"
    assert finish(reference) == "COMPLETED"

    log = run_log(pre_dir)
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


def epochs_lasting(seconds: float, recipe: list[str], folder: Path, most: int) -> int:
    """How many epochs of `recipe` train for about `seconds` here: 3 epochs timed (results.json's seconds of
    training and evaluation, start-up excluded), at most `most`."""
    [(rc, err)] = train([*recipe, "trainer.epochs=3", f"run_dir={folder}"])
    assert rc == 0, err[-2000:]
    return min(most, math.ceil(seconds / seconds_per_epoch(folder)))


def seconds_per_epoch(run_dir: Path) -> float:
    results = json.loads((run_dir / "results.json").read_text())
    return results["seconds"] / results["epoch"]


@pytest.mark.timeout(900)  # its own wait for the job is 800 s: several 1-minute starts on a loaded machine
def test_time_limit_shorter_than_run_requeues_until_done(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    # slurmctld checks limits every 30 s and sends the warning signal once the time left is under the delay
    # plus 30 s: with a one-minute limit and a 5 s delay, USR2 lands 25-55 s into each start (after the
    # trainer is up) and the kill would come one check later. About 75 s of training (timed here; at most the
    # 150 epochs of the test's first version) needs at least two starts, more on a loaded machine. The timing
    # is only as good as the load it met: a job that then trains 3x faster (seen with three test workers on
    # two cores) finishes inside its first start, which tests nothing -- so such a job is timed again from its
    # own run and the test submits a longer one (the product's part, a job that outlasts its limit, is then
    # asserted as before).
    epochs = epochs_lasting(75, tiny, tmp_path / "timing", most=150)
    args = [*cpu_args(slurm_env, tmp_path, nodes=1, minutes=1), "--signal-delay", "5"]
    for attempt in range(3):
        run_dir = tmp_path / f"run{attempt}"
        [job] = submit.main([*args, *tiny, f"trainer.epochs={epochs}", f"run_dir={run_dir}"])
        assert finish(job, timeout_s=800) == "COMPLETED"
        log = run_log(run_dir)
        if "received SIGUSR2" in log or epochs == 150:
            break
        epochs = min(150, math.ceil(75 / seconds_per_epoch(run_dir)))
    assert "received SIGUSR2" in log and "resumed from" in log
    assert '"status": "completed"' in (run_dir / "results.json").read_text()


def test_sweep_is_one_job_array_and_report_summarises_it(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    from pekd.report.cli import main as report

    jobs = submit.main([*cpu_args(slurm_env, tmp_path, nodes=1), "--job-name", "sweep", "-m", *tiny,
                        "trainer.epochs=1", "method.beta=5,25", "method.q=1,3"])
    assert len(jobs) == 4 and len({j.job_id.split("_")[0] for j in jobs}) == 1
    assert all(finish(j) == "COMPLETED" for j in jobs)
    [sweep_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("sweep-")]
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["beta=25_q=1", "beta=25_q=3", "beta=5_q=1",
                                                           "beta=5_q=3"]
    report([str(sweep_dir)])
    table = (sweep_dir / "report.md").read_text()
    for label in ("| beta=5.0 q=1 |", "| beta=5.0 q=3 |", "| beta=25.0 q=1 |", "| beta=25.0 q=3 |"):
        assert label in table
    assert "| 1/1 |" in table and "Incomplete" not in table
    assert (sweep_dir / "report.png").stat().st_size > 0


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


def test_bad_input_is_refused_before_submission(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    def queued() -> str:
        return slurm_env.run("squeue", "-h", "-o", "%i").stdout

    before = queued()
    args = cpu_args(slurm_env, tmp_path)
    assert "unknown partition 'nope'; sinfo lists: debug" in refused(
        [*args, "--partition", "nope", *tiny], capsys)
    assert "--time 2000 exceeds the 1440-minute limit of partition 'debug'" in refused(
        [*args, "--time", "2000", *tiny], capsys)
    assert "--gpus 0, but an ImageNet-scale recipe" in refused([*args, "experiment=imagenet_r34_r18"], capsys)
    assert "trainer.no_such_key" in refused([*args, *tiny, "trainer.no_such_key=1"], capsys)
    assert "is not writable" in refused([*cpu_args(slurm_env, "/proc/pekd-runs"), *tiny], capsys)

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(OmegaConf.to_yaml(compose_config([*tiny, "method.beta=5"])))
    assert "holds a run of another config (differs in method.beta)" in refused(
        [*args, *tiny, f"run_dir={other}"], capsys)
    assert queued() == before


def test_a_teacher_then_its_students_chain_themselves_with_every_site_option_honoured(
    slurm_env: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """--setup, --sbatch (pass-through) on the teacher's job; --after and --array-parallelism on the students'."""
    teacher_dir = tmp_path / "teacher"
    args = cpu_args(slurm_env, tmp_path, nodes=1)
    before = slurm_env.run("squeue", "-h", "-o", "%i").stdout
    assert refused([*args, *TINY, "teacher.name=resnet8", f"teacher.weights={teacher_dir}/student.pt"], capsys) \
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
    assert finish(teacher) == "COMPLETED"
    for job in students:
        assert finish(job) == "COMPLETED"
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
        assert finish(job) == "CANCELLED"


def test_resume_resubmits_a_cancelled_run_with_its_own_config(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    run_dir = tmp_path / "run"
    [job] = submit.main([*cpu_args(slurm_env, tmp_path, nodes=1), *tiny, "method=ce", "trainer.epochs=12",
                         f"run_dir={run_dir}"])
    _cancel_when_checkpointed(slurm_env, [job], [run_dir])
    assert json.loads((run_dir / "results.json").read_text())["status"] != "completed"
    [again] = submit.main([*cpu_args(slurm_env, tmp_path, nodes=1), "--resume", str(run_dir)])
    assert finish(again) == "COMPLETED"
    assert "resumed from" in run_log(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["status"], results["global_step"]) == ("completed", 12 * 44)


def test_the_same_sweep_command_resumes_its_unfinished_points_and_skips_finished_ones(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str], capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    command = [*cpu_args(slurm_env, tmp_path, nodes=1), "--job-name", "resweep", "-m", *tiny, "method=ce",
               "trainer.epochs=12", "seed=0,1"]
    jobs = submit.main(command)
    [sweep_dir] = [p for p in tmp_path.iterdir() if p.name.startswith("resweep-")]
    run_dirs = [sweep_dir / "seed=0", sweep_dir / "seed=1"]
    _cancel_when_checkpointed(slurm_env, jobs, run_dirs)
    again = submit.main(command)  # typed again: same folder, same run directories, resumed
    assert len(again) == 2 and all(finish(j) == "COMPLETED" for j in again)
    assert [p for p in tmp_path.iterdir() if p.name.startswith("resweep-")] == [sweep_dir]
    for run_dir in run_dirs:
        assert "resumed from" in run_log(run_dir)
        assert json.loads((run_dir / "results.json").read_text())["global_step"] == 12 * 44
    capsys.readouterr()
    assert submit.main(command) == []  # nothing left to do: nothing queued
    out = capsys.readouterr().out
    assert out.count("already completed, not submitted") == 2 and "nothing to submit" in out
