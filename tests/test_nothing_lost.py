"""Faults and bad inputs beyond the first battery (tests/test_faults.py), each as it was found: retention that
deleted the good checkpoints, Ctrl-C, reruns past trainer.max_steps, metrics logged twice, NaN in results.json, a
batch larger than the data set checked after the first write, a checkpoint of another model, read-only
filesystems, a lease stamped by a clock in the future, and TensorBoard events left queued in memory.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pekd.engine import checkpoint as ckpt
from pekd.engine.files import atomic_write_bytes
from pekd.engine.lease import Holder, Lease, lease_path
from pekd.errors import PekdError
from tests.train_helpers import (
    TINY,
    env_for,
    final_model,
    remount,
    run_python,
    spawn,
    start,
    tmpfs,
    train,
    until,
    wait,
)

pytestmark = pytest.mark.slow

CE = TINY + ["method=ce", "teacher=none"]
SHORT = "data.subset=320"  # 10 steps an epoch, where no signal has to land mid-run


def ce(run_dir: Path, *extra: str) -> list[str]:
    return CE + [f"run_dir={run_dir}", *extra]


def one_error(rc: int, stderr: str) -> str:
    assert rc == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = [x for x in stderr.splitlines() if x.startswith("error:")]
    return line


def metric_rows(run_dir: Path) -> list[tuple[int, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["tag"]) for r in csv.DictReader(f)]


def tb_scalars(run_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every scalar TensorBoard shows for the run (purged events excluded, as TensorBoard does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, tag) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]


def assert_each_once(rows: list[tuple[int, str]]) -> None:
    seen: set[tuple[int, str]] = set()
    twice = [r for r in rows if r in seen or seen.add(r)]  # type: ignore[func-returns-value]
    assert not twice, f"logged more than once: {twice[:5]}"


# ------------------------------------------------------------------ retention
def test_prune_never_keeps_a_damaged_checkpoint_in_place_of_good_ones(tmp_path: Path) -> None:
    """The issue's minimal case: ckpt-3 good, ckpt-40 garbage, ckpt-4 saved, keep_last=1 -> ckpt-4 is kept (it
    verifies), ckpt-40 is moved aside, ckpt-3 deleted; a folder with a checkpoint's name is left alone."""
    folder = tmp_path / "checkpoints"
    ckpt.save({"step": 3}, ckpt.ckpt_path(folder, 3))
    ckpt.ckpt_path(folder, 40).write_bytes(b"garbage left by a partial copy")
    (folder / "ckpt-000000050.pt").mkdir()  # not a checkpoint file: never touched, never counted
    ckpt.save({"step": 4}, ckpt.ckpt_path(folder, 4))
    ckpt.prune(folder, 1)
    assert [p.name for p in ckpt.list_checkpoints(folder)] == ["ckpt-000000004.pt"]
    assert (folder / ckpt.UNVERIFIED / "ckpt-000000040.pt").read_bytes() == b"garbage left by a partial copy"
    assert (folder / "ckpt-000000050.pt").is_dir()
    hit = ckpt.newest_valid(folder)
    assert hit is not None and hit[1] == {"step": 4}


def test_prune_keeps_the_older_good_checkpoint_when_the_new_one_is_damaged(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    ckpt.save({"step": 3}, ckpt.ckpt_path(folder, 3))
    ckpt.save({"step": 4}, ckpt.ckpt_path(folder, 4))
    raw = bytearray(ckpt.ckpt_path(folder, 4).read_bytes())
    raw[-1] ^= 0xFF  # the new file reached the disk damaged
    ckpt.ckpt_path(folder, 4).write_bytes(bytes(raw))
    ckpt.prune(folder, 1)
    assert [p.name for p in ckpt.list_checkpoints(folder)] == ["ckpt-000000003.pt"]


# ------------------------------------------------------------------ Ctrl-C
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    [(rc, err)] = train(ce(run_dir, "trainer.epochs=2"))
    assert rc == 0, err[-3000:]
    return final_model(run_dir)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "differs from the uninterrupted run"


def started(run_dir: Path, step: int) -> bool:
    return (run_dir / "metrics.csv").is_file() and any(s >= step for s, _ in metric_rows(run_dir))


def test_ctrl_c_is_a_stop_with_a_checkpoint_and_the_run_resumes_bit_exactly(reference, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    [child] = start(ce(run_dir, "trainer.epochs=2"))
    until(lambda: started(run_dir, 2), "two steps logged", procs=[child])
    os.kill(child.pid, signal.SIGINT)
    [(rc, err)] = wait([child])
    assert rc == 3, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "received Ctrl-C (SIGINT) (x 1): stopped at the step boundary, checkpointed" in log, log[-2000:]
    [(rc, err)] = train(ce(run_dir, "trainer.epochs=2"))
    assert rc == 0, err[-3000:]
    assert_same(final_model(run_dir), reference)


def test_a_second_ctrl_c_exits_at_once_without_a_traceback_and_loses_nothing(reference, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # a checkpoint at step 2, then no check before step 40: the first Ctrl-C waits there, the second one is at once
    slow = ("trainer.epochs=2", "trainer.sync_every_steps=40", "trainer.log_every_steps=40", "trainer.max_steps=2")
    [(rc, err)] = train(ce(run_dir, *slow))
    assert rc == 0, err[-3000:]
    # The second Ctrl-C must come while the run trains towards its check step. On a fast CPU (4,000 images/s) the
    # steps to it can take less than the gap between the two signals: the run has stopped (status 3, the second
    # Ctrl-C met its exit or came after it, which is right too) and the case was not exercised -- resume and try a
    # shorter gap (the next attempt's window may be the 4 steps to the epoch's end, hence a third).
    for gap in (0.1, 0.03, 0.02):  # two signals sent back to back are delivered as one
        resumes = (run_dir / "logs" / "rank0.log").read_text().count("resumed from")
        [child] = start(ce(run_dir, *slow[:-1]))
        until(lambda n=resumes: (run_dir / "logs" / "rank0.log").read_text().count("resumed from") > n, "the resume",
              procs=[child])
        os.kill(child.pid, signal.SIGINT)
        time.sleep(gap)
        os.kill(child.pid, signal.SIGINT)
        [(rc, err)] = wait([child])
        if rc != 3:
            break
        assert "Traceback" not in err and "checkpointed at global step" in err, err[-3000:]
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err and "second Ctrl-C: exiting now" in err, err[-3000:]
    assert ckpt.newest_valid(run_dir / "checkpoints") is not None
    [(rc, err)] = train(ce(run_dir, "trainer.epochs=2"))
    assert rc == 0, err[-3000:]
    assert_same(final_model(run_dir), reference)


def test_ctrl_c_outside_training_is_one_line_and_exit_130() -> None:
    """Any entry point (here: a report over a folder that takes long to walk is simulated by a sleep inside
    user_errors_exit): Ctrl-C is the user's choice, not a bug to show a traceback for."""
    # a terminal's Ctrl-C: Python's own handler (a test run started in the background by a shell, like `make test &`,
    # passes SIGINT down ignored, and Python then keeps it ignored)
    code = ("import signal, time\nfrom pekd.errors import user_errors_exit\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "@user_errors_exit\ndef main():\n    print('ready', flush=True)\n    time.sleep(60)\nmain()\n")
    child = spawn(["-c", code], env_for(0, 1, 0))
    until(lambda: "ready" in child.output()[0], "the child to start", procs=[child])
    os.kill(child.pid, signal.SIGINT)
    [(rc, err)] = wait([child], timeout=60)
    assert rc == 130 and "Traceback" not in err and err.startswith("interrupted (Ctrl-C)"), err


def test_ctrl_c_that_a_librarys_cleanup_turns_into_another_error_is_still_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the fault soak: a Ctrl-C while OmegaConf built a config left it half-built, and OmegaConf's
    flag_override cleanup then failed on it and raised a ConfigKeyError in the KeyboardInterrupt's place: a
    traceback and exit 1. An error raised while a Ctrl-C is handled is the Ctrl-C."""
    from contextlib import contextmanager

    from pekd.errors import user_errors_exit

    @contextmanager
    def flags_restored_from(state: dict[str, object]):
        try:
            yield
        finally:
            state["flags"].restore()  # type: ignore[attr-defined]  -- the interrupt left it None

    @user_errors_exit
    def compose() -> None:
        state: dict[str, object] = {"flags": None}
        with flags_restored_from(state):
            raise KeyboardInterrupt  # where the signal landed

    with pytest.raises(SystemExit) as exit_:
        compose()
    assert exit_.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted (Ctrl-C)")

    @user_errors_exit
    def a_bug() -> None:
        raise AttributeError("a bug keeps its traceback")

    with pytest.raises(AttributeError):
        a_bug()


@pytest.mark.parametrize("status,where", [(0, "atexit"), (3, "atexit"), (3, "thread")])
def test_ctrl_c_while_the_process_exits_is_one_line_and_keeps_the_commands_status(status: int, where: str) -> None:
    """The fault model's most frequent finding: a Ctrl-C landing in an exit handler, after the command's work
    (here an exit handler registered before the command, so it runs after pekd's, sleeps where torch's or
    multiprocessing's would work), printed "Exception ignored in atexit callback" with a KeyboardInterrupt
    traceback. Now one line, and the exit status is still the command's (3: a stopped run to resume). The same
    while the interpreter joins a non-daemon thread the command left running, before any exit handler (found
    looking into the fault soak's exit -2 reports: "Exception ignored in: <module 'threading'>")."""
    slow = {"atexit": "atexit.register(lambda: (print('exiting', flush=True), time.sleep(6)))\n",
            "thread": "threading.Thread(target=lambda: (time.sleep(1), print('exiting', flush=True), "
                      "time.sleep(6))).start()\n"}[where]
    code = ("import atexit, signal, sys, threading, time\nfrom pekd.errors import user_errors_exit\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            f"{slow}@user_errors_exit\ndef main():\n    sys.exit({status})\nmain()\n")
    child = spawn(["-c", code], env_for(0, 1, 0))
    until(lambda: "exiting" in child.output()[0], "the child to run its exit handlers", procs=[child])
    os.kill(child.pid, signal.SIGINT)
    [(rc, err)] = wait([child], timeout=60)
    assert rc == status and "Traceback" not in err and "Exception ignored" not in err, (rc, err)
    assert err.startswith("pekd: Ctrl-C while the process exits") and err.count("\n") == 1, err


# ------------------------------------------------------------------ reruns, metrics, results.json
def test_rerun_at_max_steps_trains_nothing_and_says_so(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for _ in range(3):
        [(rc, err)] = train(ce(run_dir, "trainer.max_steps=3"))
        assert rc == 0, err[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")][0] == "ckpt-000000003.pt"
    results = json.loads((run_dir / "results.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"results.json holds {c}, which is not JSON"))
    assert results["status"] == "stopped" and results["global_step"] == 3 and results["best_top1"] is None
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert log.count("stopped at trainer.max_steps=3, checkpointed at global step 3") == 1, log[-3000:]
    assert log.count("stopped at trainer.max_steps=3 (global step 3): no evaluation yet") == 3, log[-3000:]
    assert_each_once(metric_rows(run_dir))


def test_evaluation_logged_once_when_the_run_fails_between_logging_it_and_its_checkpoint(tmp_path: Path) -> None:
    """best.pt cannot be written (a folder holds its name): the run fails after logging epoch 0's evaluation and
    before rewriting the checkpoint that keeps it pending; the rerun evaluates again. Each (step, tag) once."""
    run_dir = tmp_path / "run"
    [(rc, err)] = train(ce(run_dir, SHORT, "trainer.epochs=2", "trainer.max_steps=1"))
    assert rc == 0, err[-3000:]
    (run_dir / "best.pt").mkdir()
    [(rc, err)] = train(ce(run_dir, SHORT, "trainer.epochs=2"))
    assert "best.pt" in one_error(rc, err)
    assert (10, "val/top1") in metric_rows(run_dir)
    (run_dir / "best.pt").rmdir()
    [(rc, err)] = train(ce(run_dir, SHORT, "trainer.epochs=2"))
    assert rc == 0, err[-3000:]
    assert_each_once(metric_rows(run_dir))
    assert_each_once(tb_scalars(run_dir))
    assert set(metric_rows(run_dir)) == set(tb_scalars(run_dir))
    assert {(10, "val/top1"), (20, "val/top1"), (10, "train/loss")} <= set(tb_scalars(run_dir))


def test_emptied_metrics_csv_loses_no_tensorboard_scalar_of_the_resumed_step(tmp_path: Path) -> None:
    """Found by `make soak`: metrics.csv emptied (not deleted) while its run was stopped; the resume purges
    TensorBoard from the checkpoint's step and must write that step's scalars again from TensorBoard's own events."""
    run_dir = tmp_path / "run"
    [(rc, err)] = train(ce(run_dir, "trainer.max_steps=3"))
    assert rc == 0, err[-3000:]
    (run_dir / "metrics.csv").write_text("")
    [(rc, err)] = train(ce(run_dir, "trainer.max_steps=5"))
    assert rc == 0, err[-3000:]
    shown = tb_scalars(run_dir)
    assert_each_once(shown)
    assert {(s, "train/loss") for s in range(1, 6)} <= set(shown), sorted(shown)


def test_damaged_metrics_csv_resumes_with_one_warning(tmp_path: Path) -> None:
    """Found by `make soak`: bytes flipped in metrics.csv (not UTF-8 any more, a NUL) ended the resume in a
    UnicodeDecodeError traceback; the damaged rows are dropped with a warning and the run goes on."""
    run_dir = tmp_path / "run"
    [(rc, err)] = train(ce(run_dir, "trainer.max_steps=3"))
    assert rc == 0, err[-3000:]
    data = bytearray((run_dir / "metrics.csv").read_bytes())
    last = data.rindex(b"\n", 0, len(data) - 1) + 1  # a row of step 3, the step the run resumes from
    data[40], data[80], data[last + 2] = 0x8D, 0, 0x8D
    (run_dir / "metrics.csv").write_bytes(bytes(data))
    [(rc, err)] = train(ce(run_dir, "trainer.max_steps=5"))
    assert rc == 0 and "Traceback" not in err, err[-3000:]
    assert "damaged row(s) dropped" in err
    assert_each_once(metric_rows(run_dir))
    assert {(s, "train/loss") for s in (4, 5)} <= set(metric_rows(run_dir))
    shown = tb_scalars(run_dir)  # the resumed step's scalars, its damaged row's too, written again from tb/
    assert_each_once(shown)
    assert {(3, tag) for tag in ("train/loss", "train/loss_ce", "train/lr")} <= set(shown), sorted(shown)


def results_files(run_dir: Path) -> dict[Path, int]:
    """Every file of a run but its logs, lease and the config/meta a start rewrites: path -> mtime."""
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and "logs" not in p.parts
            and "lease" not in p.parts and p.name not in ("config.yaml", "meta.json")}


def test_completed_rerun_writes_nothing_and_prints_its_result(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    [(rc, err)] = train(ce(run_dir, SHORT, "trainer.epochs=1"))
    assert rc == 0, err[-3000:]
    before = results_files(run_dir)
    [(rc, err)] = train(ce(run_dir, SHORT, "trainer.epochs=1"))
    assert rc == 0, err[-3000:]
    assert results_files(run_dir) == before, "a rerun of a finished run wrote into it"
    assert re.search(r"complete: 1 epochs, global step 10: best top-1 [\d.]+%, last top-1 [\d.]+%; \d+s of training "
                     r"and evaluation, \d+ images/s", err), err[-2000:]


# ------------------------------------------------------------------ checked before the first write
def test_batch_larger_than_the_data_is_refused_before_the_run_directory_exists(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    [(rc, err)] = train(ce(run_dir, "data.subset=100", "data.batch_size=128"))
    assert "fewer than one global batch" in one_error(rc, err)
    assert not run_dir.exists(), sorted(run_dir.rglob("*"))
    [(rc, err)] = train(ce(run_dir, "data.subset=100", "data.batch_size=32", "trainer.max_steps=1"))
    assert rc == 0, err[-3000:]


def test_checkpoint_of_another_model_is_one_line_naming_the_key(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for run_dir, model in ((a, "resnet8"), (b, "resnet14")):
        [(rc, err)] = train(ce(run_dir, "trainer.max_steps=1", f"model={model}"))
        assert rc == 0, err[-3000:]
    foreign = ckpt.list_checkpoints(a / "checkpoints")[0]
    (b / "checkpoints" / "ckpt-000000005.pt").write_bytes(foreign.read_bytes())
    [(rc, err)] = train(ce(b, "trainer.max_steps=6", "model=resnet14"))
    line = one_error(rc, err)
    assert "does not fit this run's resnet14" in line and "first bad key" in line and "on_existing" in line, line


# ------------------------------------------------------------------ read-only filesystems
@pytest.fixture
def read_only_disk(tmp_path: Path):
    with tmpfs(tmp_path / "ro", "4m") as mnt:
        (mnt / "old.json").write_text("{}")
        remount(mnt, "ro")
        yield mnt


def test_read_only_filesystem_is_one_line_not_masked_by_the_cleanup(read_only_disk: Path) -> None:
    with pytest.raises(PekdError, match=r"cannot write '.*old\.json': read-only file system; the filesystem is "
                                        r"read-only"):
        atomic_write_bytes(read_only_disk / "old.json", b"new")
    assert (read_only_disk / "old.json").read_text() == "{}"


def test_report_and_training_into_a_read_only_folder_are_one_line(read_only_disk: Path, tmp_path: Path) -> None:
    [(rc, err)] = train(ce(read_only_disk / "run", "trainer.max_steps=1"))
    assert "read-only" in one_error(rc, err) or "cannot be made or written" in one_error(rc, err)
    run_dir = tmp_path / "run"
    [(rc, err)] = train(ce(run_dir, "trainer.max_steps=1"))
    assert rc == 0, err[-3000:]
    done = run_python(["-m", "pekd.report", str(run_dir), "--out", str(read_only_disk / "r")])
    assert "read-only" in one_error(done.returncode, done.stderr)


# ------------------------------------------------------------------ leases and clocks
def test_a_dead_lease_stamped_in_the_future_is_taken_over_after_stale_s(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ahead = Holder(1, "other-host", 4242, "2030-01-01", time.time() + 3600, 1.0)
    lease_path(run_dir, 1).parent.mkdir(parents=True)
    lease_path(run_dir, 1).write_text(json.dumps(ahead.__dict__))
    t0 = time.monotonic()
    lease = Lease.acquire(run_dir, 1.0, 0.0)
    assert lease.generation == 2 and 1.0 <= time.monotonic() - t0 < 10


def test_a_live_lease_stamped_in_the_future_is_still_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ahead = Holder(1, "other-host", 4242, "2030-01-01", time.time() + 3600, 2.0)
    path = lease_path(run_dir, 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(ahead.__dict__))
    beat = subprocess.Popen([sys.executable, "-c", (
        "import json, sys, time\np = sys.argv[1]\nfor i in range(40):\n    d = json.load(open(p))\n"
        "    d['heartbeat'] += 1\n    open(p + '.t', 'w').write(json.dumps(d))\n"
        "    import os; os.replace(p + '.t', p)\n    time.sleep(0.25)\n"), str(path)])
    try:
        with pytest.raises(PekdError, match="is in use by host other-host"):
            Lease.acquire(run_dir, 2.0, 0.0)
    finally:
        beat.kill()
        beat.wait()


# ------------------------------------------------------------------ TensorBoard's queue
def test_scalars_reach_the_events_file_before_scalars_returns(tmp_path: Path) -> None:
    """Nothing waits in TensorBoard's queue for its background thread: a process frozen after logging (and
    taken over meanwhile) has nothing left to write when it wakes."""
    from pekd.engine.metrics import Metrics

    m = Metrics(tmp_path, True, 0)
    [events] = (tmp_path / "tb").iterdir()
    size = events.stat().st_size
    m.scalars(1, {"train/loss": 1.0})
    assert events.stat().st_size > size
    m.close()
