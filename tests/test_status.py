"""`pekd status`: run directories made by real tiny trainings in every state a run can be left in (done, failed,
stopped by SIGTERM, running, never started), read back as rows, resubmit commands and an exit status; then a sweep
on the local SLURM cluster with one run done, one running, one queued, one failed and one requeued."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import time
from pathlib import Path

import pytest

from launchers import submit
from pekd.cluster.launch_guard import active_jobs
from pekd.cluster.status import collect, main
from pekd.engine.lease import current_holder, live_holder
from slurm.local_cluster import LocalCluster
from tests.launcher_helpers import cpu_args
from tests.slurm_fixture import slurm_cluster, slurm_env, wait_for  # noqa: F401 (fixtures)
from tests.train_helpers import TINY, run_python, start, until, wait

RECIPE = [*TINY, "method=ce", "teacher=none", "data.subset=320", "data.val_subset=100"]  # 10 steps an epoch


def status(*argv: str) -> tuple[int, str, str]:
    """pekd status's exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def rows(out: str) -> dict[str, tuple[list[str], str]]:
    """run name -> (its row's cells, split at blanks; the indented line under it, or '')."""
    lines = out.splitlines()
    found = {}
    for i, line in enumerate(lines[1:-1], start=1):
        if not line.startswith(" "):
            below = lines[i + 1] if lines[i + 1].startswith("    ") else ""
            found[line.split()[0]] = (line.split(), below.strip())
    return found


def run_status(run_dir: Path) -> str | None:
    """results.json's status (None before the run wrote one)."""
    try:
        return json.loads((run_dir / "results.json").read_text())["status"]
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A folder of real runs: done (1 epoch), failed (a non-finite loss), stopped (SIGTERM mid-run, after a status
    taken while it trained), a copy of the failed one and a never-started one named by a hand-made launch record;
    and the status printed while the stopped one was running."""
    root = tmp_path_factory.mktemp("status")
    done = start([*RECIPE, "trainer.epochs=1", f"run_dir={root / 'done'}"])
    failed = start([*RECIPE, "trainer.epochs=1", "trainer.lr=1e30", f"run_dir={root / 'failed'}"])
    stopped = start([*RECIPE, "trainer.epochs=30", f"run_dir={root / 'stopped'}"])
    log = root / "stopped" / "logs" / "rank0.log"
    until(lambda: log.is_file() and "(global 5)" in log.read_text(), "the long run to train 5 steps",
          procs=stopped)
    _, while_running, _ = status(str(root / "stopped"))
    stopped[0].send_signal(signal.SIGTERM)
    assert [rc for rc, _ in wait(done + failed + stopped)] == [0, 2, 3]
    shutil.copytree(root / "failed", root / "failed_copy")
    (root / "launches").mkdir()
    command = ["launchers/submit.py", "--gpus", "0", "--partition", "debug", "--time", "10", "--after", "999",
               "--folder", str(root), "-m", *RECIPE, "trainer.epochs=1", "trainer.lr=1e30,0.1"]
    record = {"submitted": "2026-01-01T00:00:00+0000", "command": command,
              "runs": [{"job_id": "1000_0", "run_dir": str(root / "failed_copy"), "overrides": []},
                       {"job_id": "1000_1", "run_dir": str(root / "never"), "overrides": [*RECIPE, "trainer.lr=0.1"]}]}
    (root / "launches" / "1000.json").write_text(json.dumps(record))
    return root, while_running


@pytest.fixture
def no_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No squeue or sacct to ask, as on a laptop."""
    monkeypatch.setenv("PATH", str(tmp_path))


def test_each_run_is_one_row_saying_where_it_stands(runs: tuple[Path, str], no_slurm: None) -> None:
    root, _ = runs
    code, out, err = status(str(root))
    assert code == 1, out  # not everything is done
    assert err.splitlines() == ["note: no SLURM controller answers (no squeue on PATH): states from the run "
                                "directories and launch records only"]
    found = rows(out)
    assert set(found) == {"done", "failed", "failed_copy", "stopped", "never"}, out
    cells, below = found["done"]
    assert cells[1:3] == ["done", "10/10"] and re.fullmatch(r"\d+\.\d\d", cells[3]) and cells[3] == cells[4], out
    assert cells[-1] == "(released)" and below == ""
    for name in ("failed", "failed_copy"):
        cells, below = found[name]
        assert cells[1] == "failed" and below.startswith("error: non-finite loss at epoch 0"), out
    assert found["failed_copy"][0][7] == "1000_0"  # its job, from the launch record
    results = json.loads((root / "stopped" / "results.json").read_text())
    cells, below = found["stopped"]
    assert cells[1:3] == ["stopped", f"{results['global_step']}/300"], out  # 30 epochs of 10 steps
    assert below.startswith(f"stopped by a signal, checkpointed at step {results['global_step']}")
    cells, below = found["never"]
    assert cells[1:3] == ["not", "started"] and "1000_1" in cells and below == "no trace on disk", out
    assert out.splitlines()[-1] == "5 runs: 1 done, 1 stopped, 2 failed, 1 not started"


def test_a_running_run_shows_its_lease_heartbeat_and_an_eta(runs: tuple[Path, str]) -> None:
    _, out = runs
    cells, below = rows(out)["stopped"]
    assert cells[1] == "running" and re.fullmatch(r"\d+/300", cells[2]), out
    assert re.fullmatch(r"\d+(s|m\d\ds|h\d\dm)", cells[6]) and float(cells[5]) > 0, out  # ETA, images/s
    assert cells[-4] == "(heartbeat" and re.fullmatch(r"\S+:\d+", cells[-5]) and below == "", out


def test_exit_status_is_0_when_every_run_is_done(runs: tuple[Path, str], no_slurm: None) -> None:
    root, _ = runs
    code, out, err = status(str(root / "done"))
    assert code == 0 and err == "" and out.splitlines()[-1] == "1 run: 1 done", out
    code, watched, _ = status(str(root / "done"), "--watch", "0.1")  # nothing left to wait for: one look, exit 0
    assert code == 0 and watched.splitlines()[1:] == out.splitlines(), watched
    assert watched.startswith(f"pekd status {root / 'done'}  ") and watched.splitlines()[0].endswith(
        "every 0.1 s (Ctrl-C stops)")


def test_failed_prints_the_commands_that_resubmit_exactly_the_failed_runs(
    runs: tuple[Path, str], no_slurm: None
) -> None:
    root, _ = runs
    code, out, _ = status(str(root), "--failed")
    assert code == 1
    resubmit, train = sorted(out.splitlines())
    # a run of `pekd train` (here `python -m pekd.train`): that command again, its run directory spelled out
    assert train == shlex.join(["pekd", "train", *RECIPE, "trainer.epochs=1", "trainer.lr=1e30",
                                f"run_dir={root / 'failed'}"])
    # a submitted run: submit --resume with the resources of its submission, without --after (that job is over)
    pekd, command, *argv = shlex.split(resubmit)
    assert (pekd, command) == ("pekd", "submit"), resubmit
    args = submit.parse_args(argv)
    assert args.resume == [root / "failed_copy"] and args.overrides == [] and not args.multirun, resubmit
    assert (args.gpus, args.partition, args.time, args.folder, args.after) == (0, "debug", 10, root, None)


def test_bad_input_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    for folder, needle in ((tmp_path / "empty", "no pekd runs under"), (tmp_path / "file", "is not a folder")):
        proc = run_python(["-m", "pekd.cluster.status", str(folder)], timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert proc.stderr.startswith("error: ") and needle in proc.stderr and proc.stderr.count("\n") == 1


def test_a_sweep_of_hundreds_of_runs_is_read_in_well_under_a_second(
    runs: tuple[Path, str], tmp_path: Path, no_slurm: None
) -> None:
    root, _ = runs
    small = shutil.ignore_patterns("checkpoints", "tb", "*.pt")
    for i in range(100):
        for name in ("done", "failed", "stopped"):
            shutil.copytree(root / name, tmp_path / f"{name}{i}", ignore=small, copy_function=os.link)
    wall, cpu = [], []  # this shared 2-core machine's load inflates wall time; CPU time is what status costs
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        states, _, _ = collect(tmp_path)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert len(states) == 300
    print(f"\n300 runs read in {min(wall):.3f} s ({min(cpu):.3f} s of CPU; best of 3)")
    assert min(cpu) < 0.5 and min(wall) < 2.0


@pytest.mark.slow
def test_a_sweep_on_slurm_in_every_state(slurm_env: LocalCluster, tmp_path: Path) -> None:  # noqa: F811
    # Every task of the array is submitted held; releasing some decides which ones run. Then one finishes (done),
    # one trains on (running), one is held back (queued), one's trainer is SIGKILLed with --max-failures 1 (failed,
    # for good), one is requeued by hand, held (requeued 1 time).
    t0 = time.monotonic()
    jobs = submit.main([*cpu_args(slurm_env, tmp_path, nodes=1), "--job-name", "mixed", "--max-failures", "1",
                        "--sbatch", "hold", "-m", *RECIPE, "trainer.epochs=1,1000,1001,1002,1003"])
    ids = [j.job_id for j in jobs]
    [sweep] = [p for p in tmp_path.iterdir() if p.name.startswith("mixed-")]
    done, running, requeued, failed, queued = (sweep / f"epochs={e}" for e in (1, 1000, 1001, 1002, 1003))
    try:
        slurm_env.run("scontrol", "release", *ids[:4])

        def trained(run_dir: Path) -> bool:
            log = run_dir / "logs" / "rank0.log"
            return live_holder(run_dir) is not None and log.is_file() and "(global 3)" in log.read_text()

        wait_for(lambda: trained(failed), 180, "a run to train")
        holder = current_holder(failed)
        assert holder is not None
        os.kill(holder.pid, signal.SIGKILL)
        wait_for(lambda: trained(requeued), 180, "a run to train")
        slurm_env.run("scontrol", "requeuehold", ids[2])
        wait_for(lambda: trained(running), 180, "a run to train")
        wait_for(lambda: run_status(failed) == "failed", 120, "the batch script to mark the killed run failed")
        wait_for(lambda: slurm_env.run("squeue", "-h", "-j", ids[2], "-o", "%T").stdout.strip() == "PENDING", 60,
                 "the requeued job to wait in the queue")
        wait_for(lambda: run_status(done) == "completed", 180, "the 1-epoch run to complete")

        code, out, err = status(str(sweep))
        assert code == 1 and err == "", err
        found = rows(out)
        assert found[done.name][0][1:3] == ["done", "10/10"], out
        assert found[running.name][0][1] == "running" and "(heartbeat" in found[running.name][0], out
        assert found[queued.name][0][1:3] == ["queued", "-"] and f"{ids[4]} PENDING (JobHeldUser)" in out, out
        assert found[requeued.name][0][1:4] == ["requeued", "1", "time"], out
        assert found[failed.name][0][1] == "failed" and "killed by SIGKILL" in found[failed.name][1], out
        assert out.splitlines()[-1] == "5 runs: 1 done, 1 running, 1 requeued, 1 queued, 1 failed", out

        print(f"\nthe sweep in every state after {time.monotonic() - t0:.0f} s")
        code, out, _ = status(str(sweep), "--failed")
        [command] = out.splitlines()
        assert command.endswith(f"--resume {failed}") and "--sbatch hold" in command, command
        wait_for(lambda: ids[3] not in active_jobs(), 60, "the failed job to leave the queue")
        [again] = submit.main(shlex.split(command)[2:])  # it submits that run again, and only that one
        ids.append(again.job_id)
        assert [r["run_dir"] for r in json.loads((tmp_path / "launches" / f"{again.job_id}.json").read_text())["runs"]
                ] == [str(failed)]
    finally:
        slurm_env.run("scancel", *ids, check=False)
