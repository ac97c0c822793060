"""launchers/submit.py against the local SLURM cluster: two-task gloo runs, preemption, time limits, sweeps as
job arrays, and bad input refused before anything is submitted.

Runs are tiny (8x8 digits, resnet8 student and a random resnet8 teacher, one thread per task): what is tested is
the plumbing - requeue, resume, rendezvous - not the learning.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from omegaconf import OmegaConf

from pekd.launch import FailureRecord, export_rendezvous, failure_signature
from pekd.train import compose_config
from slurm.local_cluster import LocalCluster
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401

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
    final_ref = torch.load(ref_dir / "student.pt", weights_only=True)
    final_pre = torch.load(pre_dir / "student.pt", weights_only=True)
    assert final_ref.keys() == final_pre.keys()
    assert all(torch.equal(final_ref[k], final_pre[k]) for k in final_ref)


def test_time_limit_shorter_than_run_requeues_until_done(
    slurm_env: LocalCluster, tmp_path: Path, tiny: list[str]  # noqa: F811
) -> None:
    # slurmctld checks limits every 30 s and sends the warning signal once the time left is under the delay
    # plus 30 s: with a one-minute limit and a 5 s delay, USR2 lands 25-55 s into each start (after the
    # trainer is up) and the kill would come one check later. 60 epochs of digits are >= 60 s of training even on
    # a fast, idle machine, so at least two starts are needed; a loaded machine just needs more of them.
    run_dir = tmp_path / "run"
    args = [*_cpu_args(slurm_env, tmp_path, nodes=1, minutes=1), "--signal-delay", "5"]
    [job] = submit.main([*args, *tiny, "trainer.epochs=60", f"run_dir={run_dir}"])
    assert _finish(job, timeout_s=600) == "COMPLETED"
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
    for label in ("beta=5.0, q=1", "beta=5.0, q=3", "beta=25.0, q=1", "beta=25.0, q=3"):
        assert label in table
    assert "| 1/1 |" in table and "Incomplete" not in table
    assert (sweep_dir / "report.png").stat().st_size > 0


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


def test_a_repeated_failure_counts_up_and_a_different_one_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "failures.json"
    assert FailureRecord.load(path).add(failure_signature(RuntimeError("gloo: connection reset\ndetails"))) == 1
    assert FailureRecord.load(path).add("RuntimeError: gloo: connection reset") == 2
    assert FailureRecord.load(path).add("OSError: disk full") == 1
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
                                           ("1-12", 2160), ("2-12:30:00", 3630)])
def test_slurm_time_limits_read_as_minutes(text: str, minutes: int | None) -> None:
    assert submit.limit_minutes(text) == minutes
