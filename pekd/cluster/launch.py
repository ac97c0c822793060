"""The SLURM job of one training run (launchers/submit.py submits it; submitit runs it in every task).

A run outlives its jobs: a 100-epoch ImageNet run spans many time limits and preemptions, so the job is a
`submitit.helpers.Checkpointable` whose only state is the config. Everything else - where training stands - is
in the run directory, fixed at submission time, and every start resumes from its newest valid checkpoint.

Stopping (SIGUSR2 from SLURM before the time limit, or a preemption): the trainer's handler only sets a flag;
at the next step boundary the ranks agree, rank 0 checkpoints, and the trainer hands the signal on to submitit's
handler, which calls `checkpoint()` below and requeues the job.

A failure is different, and the same whichever rank it hits: an exception in training on any task, or a task
killed outright (the OOM killer's SIGKILL leaves no Python behind), ends the whole job within seconds and is
judged once, by the job's batch script, so neither the outcome nor the count depends on which task failed or
which noticed first:

- srun runs the tasks with `--kill-on-bad-exit=1`: once one ends badly, srun sends the others SIGTERM and, after
  the site's KillWait, SIGKILL, so no rank sits in a collective with a dead peer until the process-group timeout.
  Over gloo the survivors often raise "connection reset by peer" first, but not always: a killed rank's forked
  DataLoader workers hold its sockets open until they notice their parent is gone (up to 5 s), and a rank
  waiting on NCCL cannot run Python at all; KillWait bounds both.
- A task whose training raises writes this start's exit record (`pekd_exit.<restart>.json` next to submitit's
  files) unless another task wrote it first: the first failure is the cause, the peers that then lose their
  connection to it are its echoes. It then exits.
- After srun, the batch script (`batch_teardown`, which launchers/submit.py appends to the sbatch script) runs
  `python -m pekd.cluster.launch after-srun STATUS FOLDER` if srun failed. A user error (PekdError, the same on every
  try) fails the job at once. A crash - or no record at all: every failed task was killed before it could write
  one - requeues the job with `scontrol requeue`, exactly once since there is one batch script, but only until
  the job has crashed `max_failures` times in a row without a new checkpoint in between; then it fails with the
  error in the log and in results.json instead of burning allocations. Progress, not the error text, decides:
  one cause (a loader worker OOM-killed) surfaces as different exceptions depending on timing, while a run that
  checkpoints between crashes is getting somewhere.
- The batch script is not part of srun's job step, so kill-on-bad-exit spares it; scancel, the time limit and a
  requeue end it with the job, so it never acts on those. A preemption's requeue can still lose the race against
  srun's exit: `checkpoint()` writes a record first, which tells the batch script that submitit has decided.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from pekd.engine.status import completed
from pekd.errors import PekdError

log = logging.getLogger("pekd")
PORT_RANGE = (20000, 60000)
FAILURES_FILE = "pekd_failures.json"
EXIT_RECORD_GLOB = "pekd_exit.*"


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


@dataclass
class ExitRecord:
    """How this start of the job ended, as the first task to fail (or submitit's requeue) saw it; read by the batch
    script after srun (see the module docstring)."""

    # crash | user (a PekdError) | preempted (submitit's signal handler is requeueing the job) | failed (runs of a
    # packed task failed, each marked failed in its results.json: pekd.cluster.packing)
    kind: str
    rank: int
    error: str = ""  # failure_summary() of the exception
    details: str = ""  # its traceback

    @staticmethod
    def path(folder: Path) -> Path:
        """Named by the start (SLURM's restart count), so that a record left by a start that was killed before its
        batch script could read it cannot speak for a later start."""
        return folder / f"pekd_exit.{restart_count()}.json"

    def claim(self, folder: Path) -> bool:
        """Write the record unless a task already has; True if this one is it.

        Written whole under a name of this task's, then hard-linked into place: the link fails if the name exists,
        atomically on NFS too, and nobody ever reads half a record.
        """
        path = self.path(folder)
        own = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}")
        folder.mkdir(parents=True, exist_ok=True)
        own.write_text(json.dumps(asdict(self)) + "\n")
        try:
            os.link(own, path)
        except FileExistsError:
            return False
        finally:
            own.unlink(missing_ok=True)
        return True

    @classmethod
    def load(cls, folder: Path) -> ExitRecord | None:
        try:
            data = json.loads(cls.path(folder).read_text())
            return cls(str(data["kind"]), int(data["rank"]), str(data["error"]), str(data["details"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def srun_status_text(status: int) -> str:
    """srun's exit status in words: above 128 it is 128 + the signal that killed a task."""
    if status > 128:
        with contextlib.suppress(ValueError):
            return f"srun exit status {status}: a task was killed by {signal.Signals(status - 128).name}"
    return f"srun exit status {status}"


def batch_teardown(python: str, folder: Path) -> list[str]:
    """The lines launchers/submit.py appends to the sbatch script after srun: when srun failed, let
    `python -m pekd.cluster.launch after-srun` decide, then end with status 1 whatever it decided - never srun's 137,
    which a site's `RequeueExit=137` would requeue a second time, or after pekd gave up on the job."""
    verdict = f'{shlex.quote(python)} -m pekd.cluster.launch after-srun "$pekd_status" {shlex.quote(str(folder))}'
    return ["pekd_status=$?  # srun's: not 0 when a task failed (--kill-on-bad-exit=1 has ended the others)",
            f'if [ "$pekd_status" -ne 0 ]; then {verdict}; exit 1; fi']


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


class RequeuedJob(submitit.helpers.Checkpointable):
    """What every pekd job does beyond training: say how a start ended, and the batch script's verdict after a
    failed srun (requeue a crash until it stops making progress, then mark its runs failed). TrainJob trains one run
    in every task; pekd.cluster.packing's PackedJob several runs in one task."""

    max_failures: int

    def run_dirs(self) -> list[Path]:
        """The run directories of the job, whose checkpoints are its progress and whose results.json say it failed."""
        raise NotImplementedError

    def after_srun(self, status: int) -> None:
        """The batch script's verdict on a start whose srun failed with `status` (every task has ended): requeue
        after a crash unless the job keeps crashing without progress."""
        env = submitit.JobEnvironment()
        folder = env.paths.folder
        record = ExitRecord.load(folder)
        for stale in folder.glob(EXIT_RECORD_GLOB):  # this start's, and any of a start killed before it got here
            stale.unlink(missing_ok=True)
        if record is not None and record.kind != "crash":
            return  # a user error or failed packed runs fail the job as it is; after a preemption, submitit requeued it
        run_dirs = self.run_dirs()
        _log_from_batch_script(run_dirs)
        if record is None:  # every failed task was killed before it could say why (or srun itself failed)
            summary, details = f"no task raised an error ({srun_status_text(status)})", ""
        else:
            # A killed task is news even next to a recorded error, which may be a peer's echo of that kill.
            summary = f"rank {record.rank}: {record.error}" + (f" ({srun_status_text(status)})" if status > 128
                                                                else "")
            details = record.details
        step = sum(newest_checkpoint_step(d) for d in run_dirs)
        count = self._failures().add(step, summary)
        if count >= self.max_failures:
            log.error("job %s crashed %d times in a row without a new checkpoint (newest: step %d), last with %s; "
                      "not requeueing\n%s", env.job_id, count, step, summary, details)
            for run_dir in run_dirs:
                if not completed(run_dir):
                    mark_failed(run_dir, summary, env.job_id)
            return
        log.error("job %s crashed (%d of at most %d times without a new checkpoint): %s; requeueing\n%s",
                  env.job_id, count, self.max_failures, summary, details)
        subprocess.run(["scontrol", "requeue", env.job_id], check=True, timeout=60)

    def _record_exit(self, kind: str, error: BaseException | None = None) -> bool:
        """Under SLURM: say how this task's start ends, for the batch script (the first task's word counts).
        False elsewhere, where no batch script follows."""
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
            return False
        env = submitit.JobEnvironment()
        record = ExitRecord(kind, env.global_rank)
        if error is not None:
            record.error, record.details = failure_summary(error), traceback.format_exc()
        first = record.claim(env.paths.folder)
        if kind == "crash":
            log.error("rank %d failed: %s; %s", record.rank, record.error,
                      "the job's batch script decides whether to requeue" if first else
                      "another task failed first (its error is the job's)")
        return True

    def _failures(self) -> FailureRecord:
        return FailureRecord.load(submitit.JobEnvironment().paths.folder / FAILURES_FILE)


class TrainJob(RequeuedJob):
    """One training run; the same object is run by every task of the job and resubmitted on requeue."""

    def __init__(self, cfg: DictConfig, max_failures: int = 3) -> None:
        self.cfg = cfg
        self.max_failures = max_failures

    def run_dirs(self) -> list[Path]:
        return [Path(str(self.cfg.run_dir))]

    def resumable_cfg(self) -> DictConfig:
        return resumable(self.cfg)

    def __call__(self) -> dict[str, Any]:
        from pekd.engine.distributed import shutdown
        from pekd.train import run

        export_rendezvous()
        cfg = self.resumable_cfg() if restart_count() > 0 else self.cfg
        try:
            results = run(cfg)
        except PekdError as error:
            self._record_exit("user", error)
            raise  # a user error is the same on every try: fail now, with its message
        except Exception as error:
            # A dead DataLoader worker also raises from torch's SIGCHLD handler, asynchronously, for as long as
            # its iterator lives (the traceback keeps it alive): training is over, so stop listening first.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            if not self._record_exit("crash", error):
                raise  # not under SLURM (the LocalExecutor): nobody requeues, the error is the job's result
            # SystemExit passes submitit's error handler: no 'failed' result for a job that may be requeued.
            sys.exit(1)
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
        to a checkpoint: it finds the newest valid one in the run directory when it starts. The exit record tells
        a batch script that outlives submitit's requeue that the job is requeued already."""
        self._record_exit("preempted")
        return submitit.helpers.DelayedSubmission(TrainJob(self.resumable_cfg(), self.max_failures))


def resumable(cfg: DictConfig) -> DictConfig:
    """A run's config for a restart: always resume (on_existing=overwrite on a restart would move the run's own
    checkpoints aside, and =fail would refuse them)."""
    cfg = cfg.copy()
    OmegaConf.update(cfg, "on_existing", "resume")
    return cfg


def mark_failed(run_dir: Path, error: str, job_id: str) -> None:
    """Say in the run directory that the run is over (pekd.report and pekd status list it as failed, with the error),
    keeping what the last start recorded there -- unless another instance of the run (a resubmission) holds its
    lease by now: the run is then its, and so is results.json."""
    from pekd.engine.lease import live_holder
    from pekd.engine.rundir import write_json

    holder = live_holder(run_dir)
    if holder is not None:
        log.error("job %s failed for good, but %s is not marked failed: %s holds it now", job_id, run_dir,
                  holder.describe())
        return
    path = run_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        results = {}
    write_json(path, {**results, "status": "failed", "error": error, "job_id": job_id})


def _log_from_batch_script(run_dirs: list[Path]) -> None:
    """The batch script's verdict goes to its own stderr (submitit's log of task 0) and, once a run has logs, to
    its rank 0's log, where the run's story is read."""
    fmt = logging.Formatter("%(asctime)s [batch script] %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers += [logging.FileHandler(d / "logs" / "rank0.log") for d in run_dirs if (d / "logs").is_dir()]
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> None:
    """`python -m pekd.cluster.launch after-srun STATUS FOLDER`, run by the batch script (see batch_teardown); FOLDER is
    submitit's job folder pattern (with %j), which names the job's pickle and records."""
    ap = argparse.ArgumentParser(prog="python -m pekd.cluster.launch", description=main.__doc__)
    ap.add_argument("action", choices=["after-srun"])
    ap.add_argument("status", type=int, help="srun's exit status")
    ap.add_argument("folder")
    args = ap.parse_args(argv)
    os.environ["SUBMITIT_FOLDER"] = args.folder
    job = submitit.helpers.DelayedSubmission.load(submitit.JobEnvironment().paths.submitted_pickle).function
    job.after_srun(args.status)


if __name__ == "__main__":
    main()
