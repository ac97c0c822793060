"""One writer per run directory: a lease with a heartbeat, made only of operations that are atomic on NFS.

Two copies of the same command, a sweep submitted twice, or SLURM requeueing a job whose old instance still runs
on a node that stopped answering would otherwise all write checkpoints and results into one run directory. The
process that owns a run (global rank 0) holds its lease:

    run_dir/lease/<generation, 9 digits>.json   {host, pid, pid_start, job_id, restart, start, heartbeat, ...}

- Taking it: the holder's record is written whole under a private name and hard-linked to the next generation's
  name. link() fails when the name exists, atomically on NFS as well (flock is not reliable there), so of two
  starters that both saw generation g stale or free exactly one gets g+1. The current lease is the highest
  generation; older files are removed by the new holder.
- Holding it: a heartbeat thread rewrites the holder's own file (temp file + os.replace) every few seconds.
- Stale: released by its holder (a clean exit), its process gone (same host: the pid is not running, or is a
  different process that reused the pid), no heartbeat for the holder's own `stale_s` (another host: the clocks
  are assumed synchronised, as NFS and SLURM already need), or held by an earlier start of this same SLURM job
  (SLURM has requeued it, so that instance is over whatever it thinks). A stale lease is taken over, saying so.
- A heartbeat stamped more than CLOCK_SKEW_S in this host's future (the other host's clock is ahead, or was)
  cannot be aged by subtraction: it would look fresh until this clock caught up. The starter judges it by what it
  observes instead -- no change of the record for the holder's `stale_s` on this host's monotonic clock is stale,
  a change is a live holder -- watching for up to `stale_s` whatever trainer.lease_wait_s says.
- Writing: every checkpoint, results.json and export checks, right before it replaces the file, that its lease is
  still the current one (`Lease.check`). A holder that lost it -- the old instance of a requeued job -- stops
  without writing.

On NFS another host's takeover becomes visible to the old holder within the client's attribute cache time
(acdirmax, 60 s at most by default); the heartbeat window should not be shorter than that across hosts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pekd.errors import PekdError

log = logging.getLogger("pekd")
FOLDER = "lease"
CLOCK_SKEW_S = 5.0  # a heartbeat further in the future than this is judged by observation (module docstring)
_NAME = re.compile(r"^(\d{9})\.json$")


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), which tells a reused pid from the
    original; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ')' may contain spaces


def _job() -> tuple[str, int]:
    """This process's SLURM job as squeue names it (array tasks as <array job>_<task>) and its restart count."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "")
    return job, int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


@dataclass
class Holder:
    """Who holds (or held) a lease: what a refused starter is told and what staleness is judged on."""

    generation: int
    host: str
    pid: int
    start: str
    heartbeat: float
    stale_s: float
    pid_start: str | None = None
    job_id: str = ""
    restart: int = 0
    released: bool = False
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def me(cls, generation: int, stale_s: float) -> Holder:
        job, restart = _job()
        return cls(generation, socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   time.time(), stale_s, _pid_start(os.getpid()), job, restart)

    def describe(self) -> str:
        job = f", SLURM job {self.job_id}" if self.job_id else ""
        return f"host {self.host} pid {self.pid}{job}, started {self.start}, lease generation {self.generation}"

    def why_stale(self) -> str | None:
        """Why this lease no longer protects anything (None: its holder is alive, as far as can be told)."""
        if self.released:
            return "released by its holder"
        if self.host == socket.gethostname():
            if not _running(self.pid):
                return f"its process {self.pid} on {self.host} is gone"
            if self.pid_start is not None and _pid_start(self.pid) not in (None, self.pid_start):
                return f"its process {self.pid} on {self.host} is gone (the pid now belongs to another process)"
        age = time.time() - self.heartbeat
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s (its lease_stale_s is {self.stale_s:g} s)"
        job, restart = _job()
        if job and self.job_id == job and self.restart < restart:
            return f"held by start {self.restart} of this job, which SLURM has requeued (this is start {restart})"
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _generations(folder: Path) -> list[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _NAME.match(n)))


def lease_path(run_dir: Path, generation: int) -> Path:
    return run_dir / FOLDER / f"{generation:09d}.json"


def read_holder(path: Path) -> Holder:
    """A lease file's holder; an unreadable one is one error naming it and the way out."""
    try:
        return Holder(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError) as e:
        raise PekdError(f"the lease {str(path)!r} cannot be read ({e}); make sure no process is using that run "
                        "directory, then delete that file (the next start takes a new lease)") from None


def current_holder(run_dir: Path) -> Holder | None:
    """The holder of the newest lease generation of run_dir (None: never leased)."""
    for gen in reversed(_generations(run_dir / FOLDER)):
        try:
            return read_holder(lease_path(run_dir, gen))
        except FileNotFoundError:  # removed by a new holder between listing and reading: look again
            return current_holder(run_dir)
    return None


def live_holder(run_dir: Path) -> Holder | None:
    """The holder of run_dir's lease if it is alive as far as can be told (None: free, released or stale)."""
    holder = current_holder(run_dir)
    return holder if holder is not None and holder.why_stale() is None else None


def in_use(run_dir: Path, holder: Holder) -> PekdError:
    """The refusal of a start that found run_dir's lease held by a live run."""
    return PekdError(f"run directory {str(run_dir)!r} is in use by {holder.describe()} (heartbeat "
                     f"{time.time() - holder.heartbeat:.0f} s ago); wait for it to end, stop it, or set "
                     f"trainer.lease_wait_s to wait for it (a lease with no heartbeat for its "
                     f"trainer.lease_stale_s={holder.stale_s:g} s is taken over)")


def _write_whole(path: Path, holder: Holder) -> Path:
    """Write the record under a private name next to `path` (fsynced): never seen half-written under a real name."""
    tmp = path.with_name(f".{path.name}.tmp-{holder.host}-{holder.pid}-{holder.token[:8]}")
    with open(tmp, "w") as f:
        f.write(json.dumps(asdict(holder), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _create(path: Path, holder: Holder) -> bool:
    """Create `path` holding `holder` unless it exists: link() is the exclusive create that NFS honours. A link
    whose reply was lost may report an error although it was made; the private file's link count tells."""
    tmp = _write_whole(path, holder)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        if os.stat(tmp).st_nlink == 2:
            return True
        raise
    finally:
        tmp.unlink(missing_ok=True)


class _FutureWatch:
    """Judges leases whose heartbeat lies in this host's future by watching them (the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.seen: dict[int, tuple[float, float]] = {}  # generation -> (heartbeat, monotonic time first seen)
        self.alive: set[int] = set()  # generations whose heartbeat changed while watched

    def judge(self, holder: Holder) -> tuple[str | None, bool]:
        """(why it is stale, or None; whether to keep watching)."""
        ahead = holder.heartbeat - time.time()
        if ahead <= CLOCK_SKEW_S or holder.generation in self.alive:
            return None, False
        seen = self.seen.get(holder.generation)
        if seen is not None and seen[0] != holder.heartbeat:
            self.alive.add(holder.generation)
            return None, False
        if seen is None:
            log.info("the lease of %s has a heartbeat %.0f s in this host's future (%s; its clock is ahead): "
                     "watching it for up to %g s to tell whether its holder is alive", self.run_dir, ahead,
                     holder.describe(), holder.stale_s)
            seen = self.seen[holder.generation] = (holder.heartbeat, time.monotonic())
        still = time.monotonic() - seen[1]
        if still >= holder.stale_s:
            return (f"its heartbeat, stamped {ahead:.0f} s in this host's future, did not change for {still:.0f} s "
                    f"(its lease_stale_s is {holder.stale_s:g} s)"), False
        return None, True


class Lease:
    """The lease this process holds on a run directory (see the module docstring)."""

    def __init__(self, run_dir: Path, holder: Holder) -> None:
        self.run_dir, self.holder = run_dir, holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def generation(self) -> int:
        return self.holder.generation

    @property
    def path(self) -> Path:
        return lease_path(self.run_dir, self.holder.generation)

    @classmethod
    def acquire(cls, run_dir: Path, stale_s: float, wait_s: float = 0.0, first_generation: int = 1,
                busy: Callable[[Path, Holder], PekdError] | None = None) -> Lease:
        """Take the lease of run_dir, or raise one PekdError naming its live holder (after waiting up to wait_s
        seconds for it to end or go stale). `busy` words that refusal for what run_dir is to its user (a bank
        folder, a demo's folder: pekd.teacher.build_lease, pekd.science.one_driver); default in_use's, a run's."""
        busy = busy or in_use
        folder = run_dir / FOLDER
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PekdError(f"cannot create the lease folder {str(folder)!r} ({e.strerror or e}); choose a run_dir "
                            "in a folder you can write to") from None
        deadline = time.monotonic() + wait_s
        waited = False
        watch = _FutureWatch(run_dir)
        while True:
            current = current_holder(run_dir)
            why = None if current is None else current.why_stale()
            if current is not None and why is None:
                why, watching = watch.judge(current)
                if watching:
                    time.sleep(min(1.0, max(current.stale_s / 10, 0.05)))
                    continue
            if current is not None and why is None:
                if time.monotonic() < deadline:
                    if not waited:
                        log.info("run directory %s is in use by %s; waiting up to %g s for it", run_dir,
                                 current.describe(), wait_s)
                        waited = True
                    time.sleep(min(1.0, max(stale_s / 10, 0.05)))
                    continue
                raise busy(run_dir, current)
            gen = max(first_generation, current.generation + 1 if current else 1)
            holder = Holder.me(gen, stale_s)
            try:
                made = _create(lease_path(run_dir, gen), holder)
            except OSError as e:
                raise PekdError(f"cannot write the lease {str(lease_path(run_dir, gen))!r} ({e.strerror or e}); "
                                "choose a run_dir in a folder you can write to") from None
            if not made:
                continue  # another starter took this generation first: judge its lease in the next round
            if current is not None and not current.released:
                log.warning("took over the lease of %s from %s: %s", run_dir, current.describe(), why)
            for old in _generations(folder):
                if old < gen:
                    lease_path(run_dir, old).unlink(missing_ok=True)
            return cls(run_dir, holder)

    def lost_to(self) -> Holder | None:
        """Who holds the run now if not this process (None: this lease is still the current one)."""
        newest = _generations(self.run_dir / FOLDER)
        try:
            mine = read_holder(self.path)
        except (FileNotFoundError, PekdError):
            mine = None
        if mine is not None and mine.token == self.holder.token and newest and newest[-1] == self.generation:
            return None
        try:
            now = current_holder(self.run_dir)
        except PekdError:
            now = None
        return now or Holder(-1, "(unknown: the lease is gone)", -1, "?", 0.0, 0.0)

    def check(self, writing: str = "anything") -> None:
        """Raise unless this process still holds the lease: called right before a file of the run is replaced."""
        other = self.lost_to()
        if other is not None:
            raise PekdError(f"this process (lease generation {self.generation}) lost run directory "
                            f"{str(self.run_dir)!r} to {other.describe()}; it stops without writing {writing}. "
                            "Another instance of this run (e.g. SLURM's requeue of this job) owns it now")

    def renew(self) -> None:
        self.holder.heartbeat = time.time()
        os.replace(_write_whole(self.path, self.holder), self.path)

    def start_heartbeat(self) -> None:
        """Renew every sixth of stale_s (at most 10 s) on a daemon thread, until released or lost."""
        every = min(self.holder.stale_s / 6, 10.0)

        def beat() -> None:
            while not self._stop.wait(every):
                other = self.lost_to()
                if other is not None:
                    log.error("lost the lease of %s to %s; this process will stop at its next write", self.run_dir,
                              other.describe())
                    return
                try:
                    self.renew()
                except OSError as e:  # e.g. a full disk: keep trying; a lease left stale may be taken over
                    log.warning("could not renew the lease %s: %s", self.path, e)

        self._thread = threading.Thread(target=beat, name="pekd-lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released (kept, so generations only grow)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost_to() is None:
            self.holder.released = True
            try:
                self.renew()
            except OSError as e:
                log.warning("could not release the lease %s (%s); it goes stale on its own", self.path, e)

    def stamp(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with this lease's generation: what every checkpoint and results.json carries."""
        return {**record, "lease_generation": self.generation}
