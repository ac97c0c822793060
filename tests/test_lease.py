"""One writer per run directory (pekd.engine.lease): the lease's rules in-process, then against real
`python -m pekd.train` processes -- two identical commands at once, a SIGKILLed owner's lease taken over, and a
writer whose lease was taken stopping without writing.

The process tests take ~35-60 s each on a loaded 2-core machine (each trains one tiny epoch of digits).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pekd.engine import checkpoint as ckpt
from pekd.engine import rundir
from pekd.engine.lease import Holder, Lease, _create, current_holder, lease_path
from pekd.errors import PekdError
from tests.test_faults import assert_one_clean_error, ce, temp_files
from tests.train_helpers import start, until, wait


def foreign_holder(generation: int, host: str = "elsewhere", age_s: float = 0.0, stale_s: float = 60.0) -> Holder:
    """A lease as another process (on another host unless told) would have written it."""
    return Holder(generation, host, 4242, "2026-01-01T00:00:00+0000", time.time() - age_s, stale_s, job_id="777")


def plant(run_dir: Path, holder: Holder) -> bool:
    """Take generation `holder.generation` of run_dir's lease for `holder`, the way pekd does (link())."""
    (run_dir / "lease").mkdir(parents=True, exist_ok=True)
    return _create(lease_path(run_dir, holder.generation), holder)


def written_files(run_dir: Path) -> dict[str, bytes]:
    """The run's files a lost writer must leave alone, by name.

    Logs, TensorBoard and the lease folder are left out (the lease is what the test changes), and so are atomic
    writes' temp files: SIGSTOP can freeze the writer mid-checkpoint, after which the only right move is to drop
    its own temp file, which `temp_files` checks separately.
    """
    return {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and ".tmp-" not in p.name
            and not {"logs", "tb", "lease"} & set(p.parts)}


# ------------------------------------------------------------------ the rules, in-process
def test_a_live_lease_refuses_a_second_starter_naming_its_owner(tmp_path: Path) -> None:
    first = Lease.acquire(tmp_path, stale_s=60)
    with pytest.raises(PekdError) as refused:
        Lease.acquire(tmp_path, stale_s=60)
    message = str(refused.value)
    assert f"host {socket.gethostname()} pid {os.getpid()}" in message and "lease generation 1" in message
    assert "trainer.lease_wait_s" in message
    first.release()
    second = Lease.acquire(tmp_path, stale_s=60)  # a released lease is free: the next generation, no warning
    assert second.generation == 2 and not lease_path(tmp_path, 1).exists()


def test_a_lease_without_heartbeat_is_taken_over_and_one_with_heartbeat_is_not(tmp_path: Path, caplog) -> None:
    assert plant(tmp_path, foreign_holder(1, age_s=5, stale_s=60))
    with pytest.raises(PekdError, match="in use by host elsewhere pid 4242, SLURM job 777"):
        Lease.acquire(tmp_path, stale_s=60)
    assert plant(tmp_path, foreign_holder(2, age_s=61, stale_s=60))
    lease = Lease.acquire(tmp_path, stale_s=60)
    assert lease.generation == 3
    assert "took over the lease" in caplog.text and "no heartbeat for 61 s" in caplog.text


def test_a_second_starter_asked_to_wait_gets_the_lease_when_the_owner_ends(tmp_path: Path) -> None:
    owner = Lease.acquire(tmp_path, stale_s=60)
    threading.Timer(1.0, owner.release).start()
    t0 = time.monotonic()
    waiter = Lease.acquire(tmp_path, stale_s=60, wait_s=30)
    assert waiter.generation == 2 and 0.9 < time.monotonic() - t0 < 10


def test_the_heartbeat_renews_the_lease(tmp_path: Path) -> None:
    lease = Lease.acquire(tmp_path, stale_s=0.6)  # renewed every 0.1 s
    first = current_holder(tmp_path)
    lease.start_heartbeat()
    time.sleep(0.5)
    assert current_holder(tmp_path).heartbeat > first.heartbeat
    lease.release()
    assert current_holder(tmp_path).released


def test_a_writer_whose_lease_was_taken_writes_nothing(tmp_path: Path) -> None:
    lease = Lease.acquire(tmp_path, stale_s=60)
    older = ckpt.ckpt_path(tmp_path / "checkpoints", 4)
    ckpt.save(lease.stamp({"w": torch.zeros(2)}), older, lease.check)
    target = ckpt.ckpt_path(tmp_path / "checkpoints", 5)
    ckpt.save(lease.stamp({"w": torch.zeros(2)}), target, lease.check)
    assert ckpt.load(target)["lease_generation"] == 1
    assert plant(tmp_path, foreign_holder(2))  # another process took the run over
    with pytest.raises(PekdError, match="lost run directory .* to host elsewhere pid 4242.*stops without writing"):
        ckpt.save({"w": torch.ones(2)}, ckpt.ckpt_path(tmp_path / "checkpoints", 6), lease.check)
    with pytest.raises(PekdError, match="stops without writing"):  # deleting is writing: keep_last prunes nothing
        ckpt.prune(tmp_path / "checkpoints", 1, lease.check)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [older.name, target.name]  # no temp file
    lease.release()  # a lost lease is left to its new holder
    assert not current_holder(tmp_path).released


def test_a_run_directory_being_made_is_refused_for_its_owner_not_for_a_missing_config(tmp_path: Path) -> None:
    """A second identical command that looks between its twin's first folders and config.yaml: the answer is the
    live lease; once the lease is free the missing config.yaml is judged as before."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    assert plant(run_dir, foreign_holder(1))
    cfg = OmegaConf.create({"on_existing": "resume", "trainer": {"lease_stale_s": 60.0, "lease_wait_s": 0.0}})
    with pytest.raises(PekdError, match="is in use by host elsewhere pid 4242"):
        rundir.prepare(run_dir, cfg)
    assert plant(run_dir, foreign_holder(2, age_s=61))  # its maker died before writing config.yaml
    with pytest.raises(PekdError, match="has no config.yaml"):
        rundir.prepare(run_dir, cfg)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "lease"]


def test_a_job_failed_for_good_leaves_results_to_the_instance_that_holds_the_run(tmp_path: Path) -> None:
    """The batch script of a job that failed for good marks the run failed only while nobody else holds it."""
    from pekd.cluster.launch import mark_failed

    (tmp_path / "results.json").write_text('{"status": "running", "lease_generation": 1}')
    assert plant(tmp_path, foreign_holder(1))  # a resubmission of the run is training
    mark_failed(tmp_path, "RuntimeError: boom", "12")
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "running"
    assert plant(tmp_path, foreign_holder(2, age_s=61))  # nobody alive holds it
    mark_failed(tmp_path, "RuntimeError: boom", "12")
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["status"], results["error"], results["lease_generation"]) == ("failed", "RuntimeError: boom", 1)


def test_an_unreadable_lease_is_one_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "lease").mkdir()
    lease_path(tmp_path, 3).write_text('{"generation": 3, "host"')
    with pytest.raises(PekdError, match=r"the lease '.*000000003.json' cannot be read .* delete that file"):
        Lease.acquire(tmp_path, stale_s=60)


# ------------------------------------------------------------------ real training processes
@pytest.mark.slow
def test_two_identical_commands_at_once_one_trains_the_other_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    procs = start(ce(run_dir)) + start(ce(run_dir))
    results = wait(procs, timeout=600)
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, err in results]
    winner, loser = (procs[0], procs[1]) if results[0][0] == 0 else (procs[1], procs[0])
    line = assert_one_clean_error(loser.returncode, loser.output()[1])
    assert f"is in use by host {socket.gethostname()} pid {winner.pid}" in line, line
    assert json.loads((run_dir / "results.json").read_text())["lease_generation"] == 1
    assert len(ckpt.list_checkpoints(run_dir / "checkpoints")) >= 1


@pytest.mark.slow
def test_the_lease_of_a_sigkilled_owner_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    [first] = start(ce(run_dir, "trainer.ckpt_every_steps=5"))
    until(lambda: ckpt.list_checkpoints(run_dir / "checkpoints"), "a first checkpoint", procs=[first])
    first.kill_group()
    [(rc, err)] = wait(start(ce(run_dir, "trainer.ckpt_every_steps=5")))
    assert rc == 0, err[-3000:]
    assert "took over the lease" in err and f"its process {first.pid} on {socket.gethostname()} is gone" in err
    assert json.loads((run_dir / "results.json").read_text())["lease_generation"] == 2
    assert ckpt.newest_valid(run_dir / "checkpoints")[1]["lease_generation"] == 2


@pytest.mark.slow
def test_a_training_process_whose_lease_was_taken_stops_without_writing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    [proc] = start(ce(run_dir, "trainer.ckpt_every_steps=4"))
    until(lambda: ckpt.list_checkpoints(run_dir / "checkpoints"), "a first checkpoint", procs=[proc])
    os.killpg(proc.pid, signal.SIGSTOP)  # frozen, like an old instance on a node that stopped answering
    try:
        before = written_files(run_dir)
        holder = current_holder(run_dir)
        assert holder is not None and holder.pid == proc.pid
        # another process (this test) takes the run over, as SLURM's requeue of the job would
        assert plant(run_dir, foreign_holder(holder.generation + 1))
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    [(rc, err)] = wait([proc])
    line = assert_one_clean_error(rc, err)
    assert "lost run directory" in line and "host elsewhere pid 4242" in line and "stops without writing" in line
    assert written_files(run_dir) == before, "the process that lost its lease wrote into the run directory"
    assert not temp_files(run_dir), f"the process that lost its lease left temp files: {temp_files(run_dir)}"
