"""What SLURM says about a sweep's jobs, for `pekd status`: squeue for the live ones (state, reason, restart count),
sacct for the ended ones -- each with a short timeout, so that a controller that does not answer costs seconds,
not the command; without one, `pekd status` reads the run directories only and says so in one line.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

TIMEOUT_S = 5.0
# squeue -O with "|" after each field: no padding, nothing cut (reasons hold spaces, so the reason comes last)
SQUEUE_FORMAT = "JobArrayID:|,State:|,RestartCnt:|,Reason:|"


@dataclass(frozen=True)
class Job:
    """One job (array task) as squeue (live: queued or running) or sacct (ended) shows it."""

    job_id: str
    state: str  # SLURM's: PENDING, RUNNING, ... ; COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    live: bool
    restarts: int = 0  # how often SLURM requeued it (squeue's RestartCnt)
    reason: str = ""  # why it is pending (squeue's reason: JobHeldUser, Priority, Dependency, ...)


def _run(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str] | None, str]:
    """cmd's result, or None and why it did not answer."""
    if shutil.which(cmd[0]) is None:
        return None, f"no {cmd[0]} on PATH"
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S), ""
    except subprocess.TimeoutExpired:
        return None, f"{cmd[0]} did not answer within {TIMEOUT_S:g} s"
    except OSError as e:
        return None, f"{cmd[0]} cannot run ({e})"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


def queued_jobs(job_ids: list[str]) -> tuple[dict[str, Job] | None, str]:
    """The jobs among job_ids (array ids name all their tasks) that squeue lists, by task id ('123_4'); None and the
    reason when no controller answers."""
    done, why = _run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-O", SQUEUE_FORMAT])
    if done is None:
        return None, why
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:  # every one of them has left the controller's memory
            return {}, ""
        return None, f"squeue failed ({_first_line(done.stderr)})"
    jobs = {}
    for line in done.stdout.splitlines():
        fields = line.split("|")
        if len(fields) >= 4:
            restarts = int(fields[2]) if fields[2].isdigit() else 0
            jobs[fields[0]] = Job(fields[0], fields[1], True, restarts, "" if fields[3] == "None" else fields[3])
    return jobs, ""


def ended_jobs(job_ids: list[str]) -> tuple[dict[str, Job], str]:
    """How the jobs ended, from accounting (sacct; '' on success, else why it did not answer -- a site without
    slurmdbd has none)."""
    done, why = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)])
    if done is None or done.returncode != 0:
        return {}, why or f"sacct failed ({_first_line(done.stderr if done else '')})"
    jobs = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.partition("|")
        if state:
            jobs[job_id] = Job(job_id, state.split()[0], False)  # "CANCELLED by 1000" -> CANCELLED
    return jobs, ""
