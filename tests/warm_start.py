"""Warm starts: `python -m pekd.<command>` child processes that do not pay torch's imports again.

A tiny test run trains for a second but starts for seven: `import torch` (~3 s on the slow 2-core CPUs),
torch._dynamo (~2.5 s, imported by every torch.optim optimizer's constructor) and sklearn (~1.5 s, for the digits
data) before pekd runs a line. The suite starts hundreds of such children, so most of its time was those imports.

`serve` is a process that imports those third-party libraries once -- never pekd, whose own imports and their
side effects (pekd/__init__'s cuBLAS workspace) each child makes afresh -- and forks a child per request. The
child is a real process: its own pid and session, the requester's environment, working directory, stdout and
stderr (passed as file descriptors over the socket), a fresh interpreter's signal dispositions; it runs the module
with runpy as `__main__` and ends the way the interpreter ends a program (`run_as_main`: the uncaught exception's
traceback and status, non-daemon threads joined, atexit handlers, streams flushed, death by SIGINT after an
uncaught Ctrl-C). What a fork cannot give is a fresh hash seed and fresh module state of the preloaded libraries,
so a child whose environment differs from the server's where those libraries read it at import (TORCH*, OMP*,
PYTHON*, ...) gets a server of its own, started with that environment (`import_time_env`); `train_helpers.spawn`
starts every child cold when PEKD_TESTS_COLD=1 (the whole suite cold, for comparison), and the children whose
subject is the interpreter itself (`python -c`, `warm=False`).

`WarmChild` is the test's side of one child, with the surface of subprocess.Popen the tests use (pid, poll, wait,
returncode, send_signal, kill, terminate) and train_helpers.Child's (output, kill_group).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# The third-party modules a pekd command imports on its way to a first step, in the order it imports them.
PRELOAD = ("numpy", "omegaconf", "hydra", "torch", "torch._dynamo", "torch.distributed", "torch.utils.tensorboard",
           "sklearn.datasets")
# Environment variables that the preloaded libraries (or the interpreter) read when imported: a child whose value
# of any of them differs from the server's would not see it, so it gets a server of its own. CUDA's
# (CUDA_VISIBLE_DEVICES: tests/conftest.py hides the GPU from most children) are read when CUDA is first used,
# which the server never does.
IMPORT_TIME_ENV = ("TORCH", "PYTORCH", "OMP_", "KMP_", "MKL", "GOMP_", "OPENBLAS", "ONEDNN", "DNNL", "ATEN",
                   "PYTHON", "LD_", "SKLEARN", "HYDRA")


def read_all(f: IO[bytes]) -> str:
    """Everything a child wrote so far to the unnamed file `f` (pread: whatever offset the writer reached)."""
    return os.pread(f.fileno(), os.fstat(f.fileno()).st_size, 0).decode(errors="replace")


# ------------------------------------------------------------------ a child's life, as the interpreter runs it
def exit_status(code: object) -> int:
    """What the interpreter makes of SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def die_by_sigint() -> None:
    """End this process by SIGINT itself, as CPython ends one an uncaught Ctrl-C stopped. A second Ctrl-C that is
    still pending raises once more before SIGINT's default action is set: take it, and set it again (without the
    loop, a second Ctrl-C here ended the child with the server's own status)."""
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            continue


def run_as_main(main: Callable[[], object]) -> None:
    """Run `main` as an interpreter runs a program, up to the process's end: the uncaught exception's traceback
    and status, non-daemon threads joined, atexit handlers, the streams flushed -- then _exit, so nothing of the
    server runs."""
    status, interrupted = 0, False
    try:
        main()
    except SystemExit as e:
        status = exit_status(e.code)
    except BaseException as e:
        sys.setprofile(None)
        sys.excepthook(type(e), e, e.__traceback__)
        status, interrupted = 1, isinstance(e, KeyboardInterrupt)
    sys.setprofile(None)
    threading._shutdown()  # type: ignore[attr-defined]  -- what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if interrupted:  # CPython ends a process that an uncaught Ctrl-C stopped by SIGINT itself
        die_by_sigint()
    os._exit(status)


# The signals whose dispositions a child sets afresh (become_fresh); SIGPIPE and SIGXFSZ every Python ignores.
FRESH_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGHUP,
                 signal.SIGQUIT)


def ignored_signals() -> list[int]:
    """The requester's ignored signals, which a cold child inherits: exec resets a caught signal to its default
    action but leaves an ignored one ignored, and CPython then leaves SIGINT alone (no KeyboardInterrupt) -- as in
    a suite started in the background (`make test &`: the shell ignores SIGINT for it) or under nohup (SIGHUP)."""
    return [int(s) for s in FRESH_SIGNALS if signal.getsignal(s) == signal.SIG_IGN]


def become_fresh(stdout: int, stderr: int, ignored: list[int]) -> None:
    """What a forked child needs to look like a fresh `python -m` process: its own session (killed whole, like
    train_helpers.Child), dead with the server (PR_SET_PDEATHSIG), stdin /dev/null, the given stdout and stderr,
    a fresh interpreter's signal dispositions given the requester's `ignored` signals, and no wakeup fd."""
    os.setsid()
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((0, devnull), (1, stdout), (2, stderr)):
        os.dup2(target, fd)
    for fd in {devnull, stdout, stderr} - {0, 1, 2}:
        os.close(fd)
    signal.set_wakeup_fd(-1)
    for s in FRESH_SIGNALS:
        fresh = signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL
        signal.signal(s, signal.SIG_IGN if s in ignored else fresh)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def run_module(module: str, argv: list[str], cwd: str) -> Callable[[], object]:
    """`python -m module argv` in `cwd`: sys.path[0] is the working directory, and the module runs as __main__
    (a second copy if it was imported by name, as with `python -m`)."""
    os.chdir(cwd)
    sys.path[0] = os.getcwd()
    sys.argv = [module, *argv]
    sys.modules.pop(module, None)
    return lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)


# ------------------------------------------------------------------ the server
def _preload() -> None:
    for module in PRELOAD:
        importlib.import_module(module)
    assert not any(m == "pekd" or m.startswith("pekd.") for m in sys.modules), "the server must not import pekd"
    import torch

    assert not torch.cuda.is_initialized(), "CUDA was initialised before the fork: a child could not use it"
    threads = os.listdir("/proc/self/task")
    assert len(threads) == 1, f"the warm-start server runs {len(threads)} threads after its imports: forking is unsafe"


def _child(req: dict[str, Any], fds: list[int], closing: list[int]) -> None:
    for fd in closing:
        os.close(fd)
    become_fresh(*fds, req["ignored"])
    os.environ.clear()
    os.environ.update(req["env"])
    run_as_main(run_module(req["module"], req["argv"], req["cwd"]))


def _ended_status(pid: int) -> int | None:
    """The exit status of child `pid` if it has ended, leaving it unreaped (a zombie keeps its pid taken)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None or info.si_pid == 0:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def serve(path: str) -> None:
    """Accept one connection per child on the Unix socket `path`; a connection's one message (a JSON request and
    the child's stdout and stderr descriptors) forks the child; the answer is {"pid"} at once and {"status"} when
    it has ended. As with subprocess.Popen, an ended child stays a zombie -- its pid still its own, so a test may
    signal it until it has seen the end -- and is reaped when the test closes the connection after reading its
    status. Ends at the end of stdin (the test process is gone): its children with it, its socket and the socket's
    folder removed (the test process may end without a word, as an xdist worker does)."""
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    try:
        _serve(listener)
    finally:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))


def _serve(listener: socket.socket) -> None:
    """`serve`'s loop, until the end of stdin."""
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    running: dict[int, socket.socket | None] = {}  # child pid -> its requester's connection (None: gone)
    reported: dict[socket.socket, int] = {}  # connection -> its ended child, reaped when the connection closes
    print(json.dumps({"ready": os.getpid()}), flush=True)
    while True:
        waiting = [c for c in running.values() if c is not None]
        ready = select.select([listener, wake_r, sys.stdin, *waiting, *reported], [], [])[0]
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            return
        if wake_r in ready:
            os.read(wake_r, 4096)
        for pid, conn in list(running.items()):
            if (status := _ended_status(pid)) is None:
                continue
            del running[pid]
            if conn is None:  # nobody to tell
                os.waitpid(pid, 0)
                continue
            reported[conn] = pid
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"status": status}).encode())
        for conn in [c for c in ready if isinstance(c, socket.socket) and c is not listener]:
            if conn.recv(1):
                continue
            if conn in reported:  # the test has read the end: reap
                os.waitpid(reported.pop(conn), 0)
            else:  # the test is gone before its child ended: reap it when it ends
                running[next(p for p, c in running.items() if c is conn)] = None
            conn.close()
        if listener in ready:
            conn, _ = listener.accept()
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
            pid = os.fork()
            if pid == 0:
                try:
                    _child(json.loads(msg), fds, [listener.fileno(), wake_r, wake_w, conn.fileno(),
                                                  *(c.fileno() for c in running.values() if c is not None),
                                                  *(c.fileno() for c in reported)])
                finally:
                    os._exit(98)
            for fd in fds:
                os.close(fd)
            conn.send(json.dumps({"pid": pid}).encode())
            running[pid] = conn


# ------------------------------------------------------------------ the test's side
def import_time_env(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The part of `env` that the preloaded libraries read at import: children that agree on it share a server."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)))


class Server:
    """A warm-start server for the children whose import-time environment is this one's, started at the first
    such child (seconds: the imports) and ended with the test process (end of its stdin). A test process usually
    needs two: sklearn sets KMP_* variables in the environment of the process that imports it, so the children
    started after the test process imported sklearn differ from those before."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = dict(env)
        self.path = os.path.join(tempfile.mkdtemp(prefix="pekd-warm-"), "socket")
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.warm_start", self.path], cwd=cwd, env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(b'{"ready"'), f"the warm-start server did not start: {line!r} {self.output()}"

    def output(self) -> str:
        return read_all(self.log)



class WarmChild:
    """A child forked by the server for `python -m module argv`: subprocess.Popen's surface that the tests use."""

    def __init__(self, server: Server, module: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.args = [sys.executable, "-m", module, *argv]
        self.server = server
        self.out_file, self.err_file = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.conn.connect(server.path)
        request = {"module": module, "argv": list(argv), "env": dict(env), "cwd": str(cwd),
                   "ignored": ignored_signals()}
        socket.send_fds(self.conn, [json.dumps(request).encode()], [self.out_file.fileno(), self.err_file.fileno()])
        self.pid = int(self._answer(60, "its pid")["pid"])
        self.returncode: int | None = None

    def _answer(self, timeout: float | None, what: str) -> dict[str, Any]:
        if not select.select([self.conn], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        msg = self.conn.recv(65536)
        if not msg:
            raise AssertionError(f"the warm-start server died before {what}: {self.server.output()[-3000:]}")
        return json.loads(msg)

    def _ended(self, timeout: float | None) -> int:
        if self.returncode is None:
            self.returncode = int(self._answer(timeout, "the child's end")["status"])
            self.conn.close()  # the server reaps it now, as Popen.poll/wait reap
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self._ended(0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float | None = None) -> int:
        return self._ended(timeout)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # unreaped until poll() has seen its end: the pid is still this child's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        """Everything the child wrote so far to stdout and stderr."""
        return read_all(self.out_file), read_all(self.err_file)

    def kill_group(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.wait(120)
        self.out_file.close()
        self.err_file.close()


if __name__ == "__main__":
    serve(sys.argv[1])
