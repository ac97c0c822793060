"""The fault battery, against real `python -m pekd.train` processes on sklearn digits: a full disk mid-checkpoint,
a corrupted newest checkpoint, a teacher file replaced between requeues, doubled preemption signals, and SIGTERM
landing inside a checkpoint write. Each must end in a clear message or a clean resume, never in a lost run.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pekd.engine import checkpoint as ckpt
from pekd.errors import PekdError
from pekd.models import build_model
from pekd.teacher.fingerprint import RECORD, check_teacher_unchanged
from tests.test_distributed import pefd, wait_for_step
from tests.train_helpers import TINY, Child, env_for, final_model, free_port, spawn, start, train, until, wait

pytestmark = pytest.mark.slow

# One epoch (44 steps of 32) of plain CE: the cheapest deterministic run; every interrupted run below must end with
# exactly the weights of this recipe run uninterrupted.
CE = TINY + ["method=ce", "teacher=none", "trainer.epochs=1"]


def ce(run_dir: Path, *extra: str) -> list[str]:
    return CE + [f"run_dir={run_dir}", *extra]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs from the uninterrupted run"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_clean_error(rc: int, stderr: str) -> str:
    """Exit 2 with exactly one `error:` line and no traceback; returns that line."""
    assert rc == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = error_lines(stderr)
    return line


def temp_files(run_dir: Path) -> list[Path]:
    """Debris of atomic writes (`.<name>.tmp-<pid>`) anywhere in the run directory."""
    return [p for p in run_dir.rglob(".*.tmp-*")]


def assert_only_valid_checkpoints(run_dir: Path) -> None:
    folder = run_dir / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in ckpt.list_checkpoints(folder)), f"stray files: {names}"
    for p in ckpt.list_checkpoints(folder):
        ckpt.load(p)  # raises if it does not verify
    assert not temp_files(run_dir), temp_files(run_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted single-process CE run."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    [(rc, err)] = train(ce(run_dir))
    assert rc == 0, err[-3000:]
    return final_model(run_dir)


# ------------------------------------------------------------------ 1. disk full while writing a checkpoint
def test_failed_write_removes_its_temp_file_and_names_the_fix(tmp_path, monkeypatch):
    """Unit level: whatever step of the write fails, no temp file stays and the error says what to do."""
    target = tmp_path / "ckpt-000000001.pt"
    ckpt.save({"w": torch.zeros(3)}, target)
    before = target.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(PekdError, match=r"cannot write '.*ckpt-000000001\.pt': no space left on device; free space"):
        ckpt.save({"w": torch.ones(3)}, target)
    assert target.read_bytes() == before and sorted(tmp_path.iterdir()) == [target]


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs: room for one checkpoint of the CE recipe (650 kB) and the logs, not for a second one."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        if os.geteuid() == 0:  # CI runs as root: there a failed mount is a broken test, never a skip
            pytest.fail(f"root cannot mount a tmpfs ({done.stderr.strip()}): this disk-full test must run in CI")
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); test_checkpoint_file_too_large covers the "
                    "same path with RLIMIT_FSIZE")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_disk_full_mid_run_is_one_error_and_keeps_the_previous_checkpoint(small_disk):
    run_dir = small_disk / "run"
    [(rc, err)] = train(ce(run_dir, "trainer.ckpt_every_steps=5"))
    line = assert_one_clean_error(rc, err)
    assert "ckpt-000000010.pt" in line and "no space left on device" in line and "move run_dir" in line, line
    hit = ckpt.newest_valid(run_dir / "checkpoints")
    assert hit is not None and hit[0].name == "ckpt-000000005.pt" and hit[1]["global_step"] == 5
    assert_only_valid_checkpoints(run_dir)


def _ignore_sigxfsz() -> None:
    """In the child: crossing a file size limit must be an EFBIG error from write(), not a kill by SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_checkpoint_file_too_large_is_one_error_and_keeps_the_previous_checkpoint(tmp_path):
    """Without root: once checkpoint 5 is written, the running trainer gets a file size limit below a checkpoint's
    size (every other file of the run stays far smaller), so checkpoint 10 fails with EFBIG."""
    run_dir = tmp_path / "run"
    first = ckpt.ckpt_path(run_dir / "checkpoints", 5)
    proc = spawn(["-m", "pekd.train", *ce(run_dir, "trainer.ckpt_every_steps=5")], env_for(0, 1, free_port()),
                 preexec_fn=_ignore_sigxfsz)
    until(first.exists, "checkpoint 5 written", procs=[proc], interval=0.002)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (300_000, 300_000))
    [(rc, err)] = wait([proc])
    line = assert_one_clean_error(rc, err)
    assert "ckpt-000000010.pt" in line and "file too large" in line and "ulimit -f" in line, line
    hit = ckpt.newest_valid(run_dir / "checkpoints")
    assert hit is not None and hit[0] == first
    assert_only_valid_checkpoints(run_dir)


# ------------------------------------------------------------------ 2. newest checkpoint corrupted between requeues
def test_newest_valid_names_the_skipped_file_and_the_one_used(tmp_path, monkeypatch):
    for step in (1, 2):
        ckpt.save({"step": step}, ckpt.ckpt_path(tmp_path, step))
    bad = ckpt.ckpt_path(tmp_path, 2)
    bad.write_bytes(bad.read_bytes()[:-1])
    said: list[str] = []
    # the logger itself, not caplog: a run set up in this process stops "pekd" records at its own handlers
    monkeypatch.setattr(ckpt.log, "warning", lambda msg, *args: said.append(msg % args))
    path, _ = ckpt.newest_valid(tmp_path)
    assert path == ckpt.ckpt_path(tmp_path, 1)
    assert len(said) == 2 and str(bad) in said[0] and "checksum" in said[0]
    assert said[1] == f"using {path}, the newest checkpoint that verifies, instead of {bad}"


def flip_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 8):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupt_newest_checkpoint_resumes_from_the_one_before(reference, tmp_path):
    """keep_last=2, checkpoints every 5 steps: flip bytes in the newest, restart, then truncate the newest, restart;
    each start resumes from the checkpoint before, says so, and the run ends with the uninterrupted weights."""
    run_dir = tmp_path / "run"
    args = ce(run_dir, "trainer.keep_last=2", "trainer.ckpt_every_steps=5")
    folder = run_dir / "checkpoints"
    [(rc, err)] = train([*args, "trainer.max_steps=12"])
    assert rc == 0, err[-3000:]
    assert [p.name for p in ckpt.list_checkpoints(folder)] == ["ckpt-000000012.pt", "ckpt-000000010.pt"]

    flip_bytes(ckpt.ckpt_path(folder, 12))
    [(rc, err)] = train([*args, "trainer.max_steps=17"])
    assert rc == 0, err[-3000:]
    for text in (err, (run_dir / "logs" / "rank0.log").read_text()):
        assert f"{ckpt.ckpt_path(folder, 12)}' fails its checksum" in text, text[-3000:]
        assert f"using {ckpt.ckpt_path(folder, 10)}, the newest checkpoint that verifies, instead of " \
               f"{ckpt.ckpt_path(folder, 12)}" in text
        assert f"resumed from {ckpt.ckpt_path(folder, 10)}: epoch 0, step 10" in text
    assert [p.name for p in ckpt.list_checkpoints(folder)] == ["ckpt-000000017.pt", "ckpt-000000015.pt"]

    newest = ckpt.ckpt_path(folder, 17)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    [(rc, err)] = train(args)
    assert rc == 0, err[-3000:]
    assert f"{newest}' fails its checksum" in err and f"using {ckpt.ckpt_path(folder, 15)}" in err, err[-3000:]
    assert f"resumed from {ckpt.ckpt_path(folder, 15)}: epoch 0, step 15" in err
    assert_same_weights(reference, final_model(run_dir))


# ------------------------------------------------------------------ 3. the teacher's file replaced between requeues
def save_random_resnet8(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(build_model("resnet8", 10, 1).state_dict(), path)


def test_teacher_fingerprint_records_then_refuses_a_changed_file(tmp_path):
    weights = tmp_path / "teacher.pt"
    save_random_resnet8(weights, 1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    check_teacher_unchanged(run_dir, str(weights))
    assert (run_dir / RECORD).is_file()
    check_teacher_unchanged(run_dir, str(weights))  # the same bytes: accepted, however often
    save_random_resnet8(weights, 2)
    with pytest.raises(PekdError, match=rf"teacher.weights {weights} changed since this run started \(sha256 "
                                        r"[0-9a-f]+\.\.\. -> [0-9a-f]+\.\.\.\); restore the original file"):
        check_teacher_unchanged(run_dir, str(weights))


def test_replaced_teacher_file_is_refused_and_the_run_left_as_it_was(tmp_path):
    """Needs pekd/train.py to call check_teacher_unchanged (rank 0, after prepare, online teachers only)."""
    weights = tmp_path / "teacher.pt"
    save_random_resnet8(weights, 1)
    run_dir = tmp_path / "run"
    args = pefd(weights, run_dir, "trainer.epochs=3", "trainer.milestones=[2]")
    [(rc, err)] = train([*args, "trainer.max_steps=44"])  # the first of three epochs
    assert rc == 0, err[-3000:]
    assert (run_dir / RECORD).is_file(), \
        "no teacher.json: pekd/train.py must call check_teacher_unchanged after prepare (rank 0, online teacher)"
    folder = run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    save_random_resnet8(weights, 2)  # a different teacher under the same name
    [(rc, err)] = train(args)
    line = assert_one_clean_error(rc, err)
    assert f"teacher.weights {weights} changed since this run started" in line, line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# ------------------------------------------------------------------ 4. two USR2 in quick succession
def double_usr2(procs: list[Child], run_dir: Path) -> list[tuple[int, str]]:
    """Once training runs, send SIGUSR2 to every process twice, 50 ms apart (a launcher and SLURM both signalling,
    or a user repeating scancel --signal)."""
    wait_for_step(run_dir, 3, procs=procs)
    for _ in range(2):
        for p in procs:
            os.kill(p.pid, signal.SIGUSR2)
        time.sleep(0.05)
    return wait(procs)


@pytest.mark.parametrize("world", [1, 2])
def test_two_usr2_in_quick_succession_checkpoint_once(reference, tmp_path, world):
    if world == 1:
        expected = reference
    else:
        ref = train(ce(tmp_path / "ref2"), world=2)
        assert all(rc == 0 for rc, _ in ref), [(rc, err[-2000:]) for rc, err in ref]
        expected = final_model(tmp_path / "ref2")
    run_dir = tmp_path / "run"
    results = double_usr2(start(ce(run_dir), world), run_dir)
    # -12: the second USR2 arrived after the stop released its handler, and SIGUSR2's default action killed the
    # checkpointed process -- whose exit status 3 is what tells a launcher to resume it
    assert all(rc == 3 for rc, _ in results), [(rc, err[-2000:]) for rc, err in results]
    [only] = ckpt.list_checkpoints(run_dir / "checkpoints")
    assert ckpt.checkpoint_step(only) < 44, "the stop checkpoint is mid-epoch"
    # one line about the stop, counting the signals it saw by then (the second may land after the checkpoint)
    assert len(re.findall(r"received SIGUSR2 \(x [12]\): stopped at the step boundary, checkpointed at global step",
                          results[0][1])) == 1, results[0][1][-3000:]
    results = train(ce(run_dir), world)
    assert all(rc == 0 for rc, _ in results), [(rc, err[-2000:]) for rc, err in results]
    assert_same_weights(expected, final_model(run_dir))


# ------------------------------------------------------------------ 5. SIGTERM during the checkpoint write
def test_sigterm_storm_inside_checkpoint_writes_stops_once_with_only_valid_checkpoints(reference, tmp_path):
    """A checkpoint every step; as soon as one's temp file is seen, SIGTERM the trainer every 0.2 ms until it exits:
    the storm lands inside save() (this write and the stop checkpoint's), inside the trainer's log writes and in its
    exit. It must stop once, at a step boundary: exit 3, one log line about the stop, no logging error, no traceback,
    only valid checkpoints, and a resume that ends with the uninterrupted weights. The storm starts at a checkpoint
    before the last step's: a stop requested after the last check has nothing left to stop (the run completes)."""
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"
    [proc] = start(ce(run_dir, "trainer.ckpt_every_steps=1"))

    def writing_before_the_last_step() -> bool:
        names = os.listdir(folder) if folder.is_dir() else []
        return any(".tmp-" in n and ckpt.checkpoint_step(Path(n.split(".tmp-")[0][1:])) < 44 for n in names)

    until(writing_before_the_last_step, "a checkpoint write before step 44", procs=[proc], interval=0.0002)
    hits, deadline = 0, time.monotonic() + 300
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the trainer did not stop within 300 s of the storm's start"
        proc.send_signal(signal.SIGTERM)  # unreaped until poll() says it exited: the pid is still this child's
        hits += 1
        time.sleep(0.0002)  # a busy loop would starve the trainer of CPU
    [(rc, err)] = wait([proc])
    assert rc == 3, err[-3000:]
    log, out = ((run_dir / "logs" / name).read_text() for name in ("rank0.log", "rank0.out"))
    for text in (err, out):
        assert "Logging error" not in text and "Traceback" not in text, text[-3000:]
    about_the_stop = [ln for ln in log.splitlines() if "SIGTERM" in ln or "stop" in ln]
    assert len(about_the_stop) == 1 and re.search(r"received SIGTERM \(x [\d,]+\): stopped at the step boundary, "
                                                  r"checkpointed at global step \d+ ", about_the_stop[0]), \
        (hits, about_the_stop)
    assert_only_valid_checkpoints(run_dir)
    [(rc, err)] = train(ce(run_dir, "trainer.ckpt_every_steps=1"))
    assert rc == 0, err[-3000:]
    assert_only_valid_checkpoints(run_dir)
    assert_same_weights(reference, final_model(run_dir))
