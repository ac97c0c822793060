"""One run's state for `pekd status`, judged from its run directory, its newest launch record and SLURM's word on
its job (pure: everything it judges is read beforehand, by pekd.cluster.run_files and pekd.cluster.queue).

The order of the questions is the order of authority: a run whose results.json says completed is done whatever
its job says; a live lease means a process trains it now; then what SLURM says of the job (queued, requeued and
waiting, starting); then what the files say of a run that is over without completing (failed: its error line;
stopped: by a signal, at trainer.max_steps, killed, cancelled).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pekd.cluster.queue import Job
from pekd.cluster.run_files import RunFiles, job_log_error
from pekd.cluster.sweep import Launch

RUNNING = {"RUNNING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}
# how a job that SLURM will not requeue again can end without its run completing
FAILED_ENDS = {"FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "TIMEOUT", "PREEMPTED"}
STATES = ("done", "running", "requeued", "queued", "stopped", "failed", "not started")


@dataclass
class RunState:
    """A row of `pekd status`."""

    run_dir: Path
    state: str  # one of STATES
    detail: str = ""  # the error line of a failed run; why a run stopped or has not started
    requeues: int = 0
    step: int | None = None
    total: int | None = None
    last_top1: float | None = None
    best_top1: float | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    lease: str = ""
    job: str = ""  # the newest job of the run, with SLURM's state and why it waits

    @property
    def label(self) -> str:
        """The state as printed: 'requeued 2 times', 'running (requeued 1 time)', 'failed', ..."""
        times = f"{self.requeues} time{'s' if self.requeues != 1 else ''}"
        if self.state == "requeued":
            return f"requeued {times}"
        return f"{self.state} (requeued {times})" if self.requeues and self.state == "running" else self.state


def _start_time(stamp: str) -> float | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _eta(files: RunFiles, total: int) -> float | None:
    """Seconds left at the pace of the current start (the logged steps since its lease was taken: an earlier start
    on another node, or the wait in the queue between starts, says nothing about this one)."""
    since = _start_time(files.holder.start) if files.holder is not None else None
    rows = [(s, t) for s, t in files.train_times if since is None or t >= since]
    if len(rows) < 2 or rows[-1][0] <= rows[0][0] or rows[-1][1] <= rows[0][1]:
        return None
    rate = (rows[-1][0] - rows[0][0]) / (rows[-1][1] - rows[0][1])
    return max(total - files.step, 0) / rate


def _lease_text(files: RunFiles, now: float) -> str:
    if files.lease_problem is not None:
        return "unreadable lease"
    holder = files.holder
    if holder is None:
        return ""
    why = holder.why_stale()
    state = (f"heartbeat {max(now - holder.heartbeat, 0):.0f} s ago" if why is None else
             "released" if holder.released else f"stale: {why}")
    return f"{holder.host}:{holder.pid} ({state})"


def _stopped_why(files: RunFiles) -> str:
    """Why a run that is over without completing and without an error stopped."""
    if files.status == "preempted":
        step = (files.results or {}).get("global_step", files.step)  # where the results say it stopped
        return f"stopped by a signal, checkpointed at step {step}; resubmit (or rerun) to resume it"
    if files.status == "stopped":
        return f"stopped at trainer.max_steps={files.max_steps}"
    holder = files.holder
    if holder is not None and not holder.released and (why := holder.why_stale()):
        return f"killed: its lease is stale ({why})"
    return "its process ended without finishing" if files.has_config else "no trace on disk"


def _judge(files: RunFiles, launch: Launch | None, job: Job | None) -> tuple[str, str]:
    """(state, detail) in the order of the module docstring."""
    if files.status == "completed":
        return "done", ""
    holder = files.holder
    # A fresh heartbeat on another node goes stale only after lease_stale_s; SLURM knows at once that its job ended.
    job_ended = job is not None and not job.live and holder is not None and holder.job_id == job.job_id
    if holder is not None and holder.why_stale() is None and not job_ended:
        return "running", ""
    error = (files.results or {}).get("error") or files.error
    if files.status == "failed" and launch is not None and (files.results or {}).get("job_id") == launch.job_id:
        return "failed", str(error)  # the batch script's verdict on the newest job, which may still be ending
    if job is not None and job.live:
        if job.state in RUNNING:
            return "running", "starting" if not files.has_config else ""
        # COMPLETING: the job is ending; what follows is in its reason (a requeue), else in the run's files
        if job.state != "COMPLETING" or "requeue" in job.reason.lower():
            return ("requeued" if job.restarts else "queued"), ""
    if files.status == "failed":
        return "failed", str(error or "results.json says failed, and no log names an error")
    if job is not None and job.state in FAILED_ENDS:
        if error is None and launch is not None:
            error = job_log_error(launch.folder, job.job_id)
        return "failed", f"SLURM job {job.job_id} {job.state}" + (f": {error}" if error else "")
    if job is not None and job.state == "CANCELLED":
        return "stopped", f"SLURM job {job.job_id} was cancelled"
    if files.status in ("running", None) and error is not None and (files.has_config or files.results):
        return "failed", str(error)  # a local run whose process ended on an error
    if not files.has_config and files.results is None and holder is None:
        return "not started", "no trace on disk" if job is None else f"SLURM job {job.job_id} {job.state}"
    return "stopped", _stopped_why(files)


def run_state(files: RunFiles, launch: Launch | None, job: Job | None, now: float | None = None) -> RunState:
    now = time.time() if now is None else now
    state, detail = _judge(files, launch, job)
    total = files.epochs * files.steps_per_epoch if files.epochs and files.steps_per_epoch else None
    if files.max_steps:
        total = min(total, files.max_steps) if total else files.max_steps
    requeues = max(job.restarts if job else 0, files.holder.restart if files.holder else 0)
    job_text = launch.job_id if launch is not None else ""
    if job is not None:
        job_text = f"{job.job_id} {job.state}" + (f" ({job.reason})" if job.reason else "")
    started = files.has_config or files.results is not None
    return RunState(files.run_dir, state, detail, requeues, files.step if started else None, total,
                    files.top1("last"), files.top1("best"), files.images_per_s,
                    _eta(files, total) if state == "running" and total else None, _lease_text(files, now), job_text)
