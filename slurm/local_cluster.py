"""A one-host SLURM cluster for development and tests: `slurm/local_cluster.py start|stop|status --dir DIR`.

Why a real cluster: what the launcher must get right (requeue on USR2, job arrays, a rendezvous across tasks,
sacct-driven job states) only shows against the real scheduler, and Debian's slurm packages start in well
under a second. munged, slurmctld and one slurmd per node run as plain background processes of the caller
(no systemd, no cgroups), with every file - key, sockets, state, logs, pid files - under DIR, so a developer's
cluster and a test session's can run side by side and `stop` leaves nothing behind.

Fake nodes are named 127.0.0.1, 127.0.0.2, ...: Linux answers on the whole 127/8 block, so each name
resolves on its own and torch's rendezvous (MASTER_ADDR = first node of SLURM_JOB_NODELIST) needs no hosts
entries. With `--netns` (netns=True) each slurmd runs in a network namespace of its own instead, with its own
address and name (slurm/netns.py), so that jobs' traffic between nodes crosses a real network boundary that can
be cut or slowed.

There is no slurmdbd (it needs MySQL), so `sacct` would fail and submitit could not see job states. Instead
job ends go to a jobcomp text file, and DIR/bin/sacct - first on PATH in `LocalCluster.env()` - runs
slurm/sacct.py, which answers from squeue (live and recently finished jobs) and that file (older ones).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

try:
    from slurm.netns import ClusterNet, NetnsError
except ImportError:  # run as a script (`python slurm/local_cluster.py`, slurm/sacct.py): slurm/ is on sys.path
    from netns import ClusterNet, NetnsError  # type: ignore[no-redef]

TEMPLATE = Path(__file__).with_name("slurm.conf.template")
SBIN = os.pathsep.join(("/usr/sbin", "/usr/bin", "/sbin", "/bin"))
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
# UNIX sockets (munged's, slurmstepd's under the spool dir) must fit in 108 bytes; the spool ones add ~50.
MAX_DIR_LEN = 55
# squeue format: job name last, so a '|' in a name cannot shift the other fields.


class ClusterError(RuntimeError):
    """The local cluster could not be started or queried; the message says what to look at."""


@dataclass(frozen=True)
class LocalCluster:
    """One cluster directory and the shape of the cluster to run in it."""

    dir: Path
    nodes: int = 1
    cpus: int = field(default_factory=lambda: max(2, os.cpu_count() or 1))
    partition: str = "debug"
    cred_expire_s: int = 5
    # Each slurmd in a network namespace of its own (slurm/netns.py): node traffic crosses veths and a bridge.
    netns: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dir", Path(self.dir).resolve())

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def node_names(self) -> list[str]:
        if self.netns:
            return [n.name for n in self.net.nodes]
        return [f"127.0.0.{i + 1}" for i in range(self.nodes)]

    @property
    def net(self) -> ClusterNet:
        """The namespaces, cables and addresses of a cluster started with netns=True."""
        return ClusterNet.for_dir(self.dir, self.nodes)

    @property
    def munge_socket(self) -> Path:
        return self.dir / "run" / "munge.socket"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment for SLURM clients (sbatch, squeue, submitit): SLURM_CONF and the sacct stand-in.

        Jobs inherit it from sbatch, which is how `scontrol requeue` inside a job finds this cluster too.
        """
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join((str(self.dir / "bin"), env.get("PATH", os.defpath)))
        return env

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command against this cluster and capture its text output."""
        return subprocess.run(cmd, env=self.env(), check=check, capture_output=True, text=True, timeout=60)

    # -- daemons ---------------------------------------------------------------------------------------------

    def daemons(self) -> dict[str, int | None]:
        """Pid of every daemon this directory has had (None when not running), by pid-file name."""
        run = self.dir / "run"
        names = ["munged", "slurmctld"] + [f"slurmd-{n}" for n in self.node_names]
        names += [p.stem for p in sorted(run.glob("slurmd-*.pid")) if p.stem not in names]
        return {name: self._live_pid(run / f"{name}.pid") for name in names}

    def is_running(self) -> bool:
        return all(pid is not None for pid in self.daemons().values())

    def start(self) -> None:
        """Start the cluster if it is not fully up; safe to call on a running or half-stopped one.

        State (job ids, finished jobs) survives stop/start; delete DIR for a clean slate.
        """
        if self.is_running():
            return
        self.stop()
        self._check_prerequisites()
        for sub in ("state", "log", "bin", "munge", *(f"spool/{n}" for n in self.node_names)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket directory that not everyone may traverse.
        (self.dir / "run").mkdir(exist_ok=True)
        (self.dir / "run").chmod(0o755)
        (self.dir / "munge").chmod(0o700)
        if self.netns:
            try:
                self.net.create()
            except NetnsError as e:
                raise ClusterError(str(e)) from e
        self._start_munged()
        self._write_conf()
        self._write_sacct_wrapper()
        daemon_env = self.env()
        conf = str(self.conf)
        _spawn(["slurmctld", "-i", "-f", conf], daemon_env, self.dir)
        for node in self.node_names:
            inside = [*self.net.exec_prefix(node), _which("slurmd") or "slurmd"] if self.netns else ["slurmd"]
            _spawn([*inside, "-f", conf, "-N", node], daemon_env, self.dir)
        self._wait_for_nodes()

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by their pid files and wait until they are gone.

        Jobs first: slurmd going away leaves running job steps alive, and they would outlive the cluster.
        """
        daemons = self.daemons()
        if daemons.get("slurmctld") is not None:
            self._cancel_all_jobs()
        order = [n for n in daemons if n.startswith("slurmd-")] + ["slurmctld", "munged"]
        for name in order:
            pid = daemons.get(name)
            if pid is not None:
                _terminate(pid, name)
            (self.dir / "run" / f"{name}.pid").unlink(missing_ok=True)
        if self.netns:  # after the daemons and jobs: a namespace lives on while a process runs in it
            self.net.destroy()

    # -- helpers ---------------------------------------------------------------------------------------------

    def _live_pid(self, pid_file: Path) -> int | None:
        """The pid in pid_file if that process is alive and ours (its command line names this directory)."""
        try:
            pid = int(pid_file.read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            return None
        # A zombie still answers kill(pid, 0); the state letter follows the ')' closing the command name.
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X") or str(self.dir) not in cmdline:
            return None
        return pid

    def _check_prerequisites(self) -> None:
        missing = [b for b in ("munged", "slurmctld", "slurmd", "sinfo") if _which(b) is None]
        if missing:
            raise ClusterError(
                f"{', '.join(missing)} not found: install Debian's slurmctld slurmd slurm-client munge "
                "(scripts/setup.sh does)"
            )
        if self.cred_expire_s < 5:
            raise ClusterError("slurmctld rejects cred_expire below 5 s (and silently falls back to 120 s)")
        if len(str(self.dir)) > MAX_DIR_LEN:
            raise ClusterError(
                f"cluster directory {self.dir} is too long for the UNIX sockets under it "
                f"(at most {MAX_DIR_LEN} characters); use a shorter --dir"
            )

    def _start_munged(self) -> None:
        key = self.dir / "munge" / "munge.key"
        if not key.exists():
            # munged wants a private key of at least 32 bytes; random bytes are what mungekey writes too.
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
        # --force: /tmp-style parents (world-writable, sticky) are fine for a private development cluster.
        _spawn(
            [
                "munged",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--log-file={self.dir / 'log' / 'munged.log'}",
                f"--pid-file={self.dir / 'run' / 'munged.pid'}",
                f"--seed-file={self.dir / 'munge' / 'munged.seed'}",
            ],
            self.env(),
            self.dir,
        )

    def _write_conf(self) -> None:
        """Render slurm.conf with fresh free ports (a restarted cluster must not trip over a busy one)."""
        ports = _free_ports(1 + self.nodes)
        memory_mb = _memory_mb()
        addrs = [n.addr for n in self.net.nodes] if self.netns else self.node_names
        node_lines = "\n".join(
            f"NodeName={name} NodeAddr={addr} NodeHostname={socket.gethostname()} Port={port} "
            f"CPUs={self.cpus} RealMemory={memory_mb} State=UNKNOWN"
            for name, addr, port in zip(self.node_names, addrs, ports[1:], strict=True)
        )
        text = Template(TEMPLATE.read_text()).substitute(
            dir=self.dir,
            host=socket.gethostname().split(".")[0],
            ctld_addr=self.net.gateway if self.netns else "127.0.0.1",
            ctld_port=ports[0],
            munge_socket=self.munge_socket,
            cred_expire=self.cred_expire_s,
            # Ids from the clock: a wiped and recreated cluster must not reuse ids whose logs still sit in
            # run folders (submitit names its files by job id).
            first_job_id=int(time.time()) % 10_000_000 + 1,
            node_lines=node_lines,
            partition=self.partition,
        )
        self.conf.write_text(text)

    def _write_sacct_wrapper(self) -> None:
        wrapper = self.dir / "bin" / "sacct"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# sacct stand-in for a cluster without slurmdbd; see slurm/sacct.py.\n"
            f'exec {sys.executable} {Path(__file__).with_name("sacct.py").resolve()} --dir {self.dir} "$@"\n'
        )
        wrapper.chmod(0o755)

    def _wait_for_nodes(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
            states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            if states and all(
                s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states.values()
            ):
                return
            time.sleep(0.1)
        raise ClusterError(f"nodes did not come up within {START_TIMEOUT_S:.0f} s.\n{self._log_tails()}")

    def _cancel_all_jobs(self) -> None:
        ids = self.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
        if not ids:
            return
        self.run("scancel", *sorted(set(ids)), check=False)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            busy = self.run("squeue", "-h", "-t", "running,completing,configuring,suspended", "-o", "%A",
                            check=False)
            if busy.returncode != 0 or not busy.stdout.strip():
                return
            time.sleep(0.2)

    def _log_tails(self, lines: int = 15) -> str:
        parts = []
        for log in sorted((self.dir / "log").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log}\n" + "\n".join(tail))
        return "\n".join(parts)


def _which(binary: str) -> str | None:
    return shutil.which(binary, path=os.pathsep.join((os.environ.get("PATH", ""), SBIN)))


def _spawn(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run a daemon's start command; it forks into the background and returns once it is listening."""
    exe = _which(cmd[0])
    if exe is None:
        raise ClusterError(f"{cmd[0]} not found")
    proc = subprocess.run([exe, *cmd[1:]], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


def _terminate(pid: int, name: str) -> None:
    """SIGTERM, then SIGKILL if the daemon is still there after STOP_TIMEOUT_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
    raise ClusterError(f"{name} (pid {pid}) survived SIGKILL")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _memory_mb() -> int:
    """Total memory in MB, so memory requests (--mem-per-gpu and the like) fit the node."""
    meminfo = Path("/proc/meminfo").read_text()
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    return int(match.group(1)) // 1024 if match else 4096


# -- CLI -----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, required=True, help="cluster directory (state, logs, sockets)")
    parser.add_argument("--nodes", type=int, default=1, help="fake nodes, one slurmd each")
    parser.add_argument("--cpus", type=int, default=max(2, os.cpu_count() or 1), help="CPUs per node")
    parser.add_argument("--partition", default="debug")
    parser.add_argument("--netns", action="store_true",
                        help="each slurmd in a network namespace of its own (root; give it to stop as well)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir, nodes=args.nodes, cpus=args.cpus, partition=args.partition, netns=args.netns)
    try:
        if args.action == "start":
            cluster.start()
            print(f"export SLURM_CONF={cluster.conf} PATH={cluster.dir / 'bin'}:$PATH")
        elif args.action == "stop":
            cluster.stop()
        else:
            for name, pid in cluster.daemons().items():
                print(f"{name:24s} {'running, pid ' + str(pid) if pid else 'stopped'}")
            if not cluster.is_running():
                return 3
            print(cluster.run("sinfo", check=False).stdout, end="")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
