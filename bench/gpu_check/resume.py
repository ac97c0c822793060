"""`python -m bench.gpu_check.resume`: 2 ranks on one GPU, stopped by SIGUSR2 mid-run and resumed, end bit-equal
to the same run uninterrupted.

PEFD with an online teacher, trainer.amp=fp16 (GradScaler state in the checkpoint), grad clipping, an EMA of the
student, SyncBatchNorm and 2 accumulation steps per rank, deterministic. Two ranks share the one GPU over gloo on
CUDA tensors (PEKD_DIST_BACKEND=gloo: NCCL refuses two ranks on one device), so the stop agreement, DDP's
gradient all-reduce and SyncBatchNorm's all_gather all cross the process boundary as they would across GPUs.
The reference and the interrupted run start together; only rank 1 is signalled, so both ranks must agree to stop.
Without CUDA the same harness runs on the CPU without fp16 and SyncBatchNorm (both need CUDA) and reports NOT
CHECKED.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import torch

from bench.gpu_check.common import (
    NOT_CHECKED,
    PASS,
    error_of,
    finished,
    has_cuda,
    overrides,
    random_teacher,
    run_step,
    work_dir,
)
from tests.train_helpers import start, wait

SIGNAL_AT = 3  # global step after which rank 1 gets SIGUSR2; the stop lands on the next sync_every_steps boundary


def newest_logged_step(run_dir: Path) -> int:
    log = run_dir / "logs" / "rank0.log"
    if not log.exists():
        return -1
    steps = [int(line.split("(global ")[1].split(")")[0]) for line in log.read_text().splitlines()
             if "(global " in line]
    return max(steps, default=-1)


def checkpoint_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """Student, projectors and (if any) EMA weights of the run's newest checkpoint, keyed apart."""
    from pekd.engine import checkpoint as ckpt

    hit = ckpt.newest_valid(run_dir / "checkpoints")
    assert hit is not None, f"no valid checkpoint in {run_dir}"
    state = {f"model.{k}": v for k, v in hit[1]["model"].items()}
    ema = hit[1].get("ema") or {}
    state.update({f"ema.{k}": v for k, v in ema.items() if isinstance(v, torch.Tensor)})
    return state


def main() -> tuple[str, str, dict[str, Any]]:
    cuda = has_cuda()
    work = work_dir("resume")
    teacher = random_teacher(work)
    precision = ["trainer.amp=fp16", "trainer.sync_bn=true"] if cuda else ["trainer.amp=off", "trainer.sync_bn=false"]
    args = overrides("method=pefd", "teacher.name=resnet8", f"teacher.weights={teacher}", *precision,
                     "trainer.grad_clip=1.0", "trainer.ema_decay=0.9", "data.batch_size=64", "data.max_micro_batch=16",
                     "trainer.epochs=1", "trainer.deterministic=true", "trainer.threads=1",
                     "trainer.sync_every_steps=4", "on_existing=overwrite")
    os.environ["PEKD_DIST_BACKEND"] = "gloo"  # inherited by the ranks (train_helpers copies os.environ)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # both ranks are on this node, whatever its hostname resolves to
    ref, cut = work / "ref", work / "cut"
    t0 = time.perf_counter()
    ref_procs = start([*args, f"run_dir={ref}"], world=2)
    cut_procs = start([*args, f"run_dir={cut}"], world=2)
    deadline = time.monotonic() + 300
    while newest_logged_step(cut) < SIGNAL_AT:
        early = [p for p in cut_procs if p.poll() is not None]
        assert not early, f"a rank exited early ({early[0].returncode}): {error_of(early[0].output()[1])}"
        assert time.monotonic() < deadline, "the interrupted run never reached its signal step"
        time.sleep(0.01)
    cut_procs[1].send_signal(signal.SIGUSR2)
    stopped = wait(cut_procs, timeout=300)
    assert all(rc == 3 for rc, _ in stopped), f"exits {[rc for rc, _ in stopped]}, not 3 (preempted) on both ranks: " \
        f"{[error_of(e) for _, e in stopped]}"
    stopped_at = finished(cut)["global_step"]
    resumed = wait(start([*args, f"run_dir={cut}"], world=2), timeout=300)
    reference = wait(ref_procs, timeout=300)
    for name, results in (("reference", reference), ("resumed", resumed)):
        assert all(rc == 0 for rc, _ in results), f"{name} run failed: {[(rc, error_of(e)) for rc, e in results]}"
    seconds = time.perf_counter() - t0
    a, b = checkpoint_state(ref), checkpoint_state(cut)
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    assert any(k.startswith("ema.") for k in a), "the checkpoint holds no EMA state"
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resume, e.g. {differ[:3]}"
    total = finished(ref)["global_step"]
    assert 0 < stopped_at < total == finished(cut)["global_step"], (stopped_at, total)
    where = "2 ranks on one GPU over gloo, fp16" if cuda else "CPU harness rehearsal: 2 ranks gloo, fp32, no SyncBN"
    figure = (f"{where}: stopped at step {stopped_at} of {total}, resumed; {len(a)} tensors "
              f"(student, projectors, EMA) bit-equal to the uninterrupted run ({seconds:.0f} s)")
    details = {"stopped_at": stopped_at, "tensors": len(a), "seconds_runs": round(seconds, 1)}
    return (PASS if cuda else NOT_CHECKED), figure, details


if __name__ == "__main__":
    run_step("ddp2_resume", main)
