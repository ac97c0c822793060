"""The SLURM job of one training run (launchers/submit.py submits it; submitit runs it in every task).

A run outlives its jobs: a 100-epoch ImageNet run spans many time limits and preemptions, so the job is a
`submitit.helpers.Checkpointable` whose only state is the config. Everything else - where training stands - is
in the run directory, fixed at submission time, and every start resumes from its newest valid checkpoint.

Stopping (SIGUSR2 from SLURM before the time limit, or a preemption): the trainer's handler only sets a flag;
at the next step boundary the ranks agree, rank 0 checkpoints, and the trainer hands the signal on to submitit's
handler, which calls `checkpoint()` below and requeues the job. A crash is different: the job requeues itself
too (a node or network fault goes away), but only until it has crashed `max_failures` times in a row without a
new checkpoint in between; then it fails with the error in the log and in results.json instead of burning
allocations. Progress, not the error text, decides: one cause (a loader worker OOM-killed) surfaces as different
exceptions depending on timing, while a run that checkpoints between crashes is getting somewhere.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from pekd.errors import PekdError

log = logging.getLogger("pekd")
PORT_RANGE = (20000, 60000)
FAILURES_FILE = "pekd_failures.json"


def restart_count() -> int:
    """How often SLURM has requeued this job (0 on the first start; the same on every task)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def export_rendezvous() -> None:
    """Export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for torch's env:// rendezvous.

    submitit derives the port from the job id alone, so a requeued job would meet at the port its previous
    incarnation used (possibly still held by a dying process); mixing in the restart count gives every start
    its own port that all tasks still agree on without talking.
    """
    dist_env = submitit.helpers.TorchDistributedEnvironment()
    seed = f"{submitit.JobEnvironment().job_id}/{restart_count()}"
    dist_env.master_port = random.Random(seed).randint(*PORT_RANGE)
    dist_env.export(set_cuda_visible_devices=False, overwrite=True)


@dataclass
class FailureRecord:
    """Consecutive crashes without progress, kept next to submitit's files of the job (not in the run directory,
    which must stay a clean pekd run until the trainer has adopted it)."""

    path: Path
    count: int = 0
    step: int = -1  # global step of the newest checkpoint when the last crash happened
    error: str = ""

    @classmethod
    def load(cls, path: Path) -> FailureRecord:
        try:
            data = json.loads(path.read_text())
            return cls(path, int(data["count"]), int(data["step"]), str(data["error"]))
        except (OSError, ValueError, KeyError):
            return cls(path)

    def add(self, step: int, error: str) -> int:
        """Count a crash; one after a newer checkpoint than the last crash's starts the count again."""
        self.count = self.count + 1 if step == self.step else 1
        self.step, self.error = step, error
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"count": self.count, "step": step, "error": error}) + "\n")
        return self.count

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def newest_checkpoint_step(run_dir: Path) -> int:
    """Global step of the newest checkpoint file in the run directory (-1: none yet); names suffice to see progress."""
    from pekd.engine.checkpoint import checkpoint_step, list_checkpoints

    found = list_checkpoints(run_dir / "checkpoints")
    return checkpoint_step(found[0]) if found else -1


def failure_summary(error: BaseException) -> str:
    """The type and first message line of the error at the bottom of its `raise ... from` chain: the cause."""
    for _ in range(32):  # a cause chain is short; the bound only guards against a cycle
        cause = error.__cause__
        if cause is None or not str(cause).strip():
            break
        error = cause
    return f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')[:300]}"


class TrainJob(submitit.helpers.Checkpointable):
    """One training run; the same object is run by every task of the job and resubmitted on requeue."""

    def __init__(self, cfg: DictConfig, max_failures: int = 3) -> None:
        self.cfg = cfg
        self.max_failures = max_failures

    def resumable_cfg(self) -> DictConfig:
        """The config for a restart: always resume (on_existing=overwrite on a restart would move the run's
        own checkpoints aside, and =fail would refuse them)."""
        cfg = self.cfg.copy()
        OmegaConf.update(cfg, "on_existing", "resume")
        return cfg

    def __call__(self) -> dict[str, Any]:
        from pekd.engine.distributed import shutdown
        from pekd.train import run

        export_rendezvous()
        cfg = self.resumable_cfg() if restart_count() > 0 else self.cfg
        try:
            results = run(cfg)
        except PekdError:
            raise  # a user error is the same on every try: fail now, with its message
        except Exception as error:
            # A dead DataLoader worker also raises from torch's SIGCHLD handler, asynchronously, for as long as
            # its iterator lives (the traceback keeps it alive): training is over, so stop listening first.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self._requeue_or_raise(error)
            raise
        finally:
            shutdown()
        if results["status"] == "completed":
            self._failures().clear()
            # A time-limit USR2 arriving now would find no handler once Python starts shutting down (it
            # restores the default action, which kills) and turn a finished run into a FAILED job; an ignored
            # signal stays ignored through shutdown.
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return results

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's USR2 handler, after the trainer has already checkpointed at a step boundary
        (or before training started, when there is nothing new to save). The resubmitted job holds no path
        to a checkpoint: it finds the newest valid one in the run directory when it starts."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.resumable_cfg(), self.max_failures))

    def _mark_failed(self, error: str, job_id: str) -> None:
        """Say in the run directory that the run is over (pekd.report lists it as failed, with the error), keeping
        what the last start recorded there."""
        from pekd.engine.rundir import write_json

        path = Path(str(self.cfg.run_dir)) / "results.json"
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            results = {}
        write_json(path, {**results, "status": "failed", "error": error, "job_id": job_id})

    def _failures(self) -> FailureRecord:
        return FailureRecord.load(submitit.JobEnvironment().paths.folder / FAILURES_FILE)

    def _requeue_or_raise(self, error: BaseException) -> None:
        """Rank 0 requeues the whole job after a crash unless it keeps crashing without progress; other ranks let
        their error end their task (the requeue restarts them anyway)."""
        env = submitit.JobEnvironment()
        if env.global_rank != 0 or os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return
        summary = failure_summary(error)
        step = newest_checkpoint_step(Path(str(self.cfg.run_dir)))
        count = self._failures().add(step, summary)
        details = traceback.format_exc()
        if count >= self.max_failures:
            log.error("job %s crashed %d times in a row without a new checkpoint (newest: step %d), last with %s; "
                      "not requeueing\n%s", env.job_id, count, step, summary, details)
            self._mark_failed(summary, env.job_id)
            return
        log.error("job %s crashed (%d of at most %d times without a new checkpoint): %s; requeueing\n%s",
                  env.job_id, count, self.max_failures, summary, details)
        subprocess.run(["scontrol", "requeue", env.job_id], check=True, timeout=60)
        sys.exit(1)  # SystemExit passes submitit's error handler: no 'failed' result for a requeued job
