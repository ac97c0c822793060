"""A warm start (tests/warm_start.py) is what a cold `python -m` start is, seen from the test and from the program:
the same exit statuses, output, arguments, environment, working directory and signal dispositions -- so the
suite's children may start warm without the suite testing something else."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.train_helpers import REPO, Child, env_for, spawn, until
from tests.warm_start import Server, WarmChild

PROBE = '''
import atexit, json, os, signal, sys, threading, time
what = sys.argv[1]
print(json.dumps({"name": __name__, "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
                  "probe": os.environ.get("PROBE"), "int": str(signal.getsignal(signal.SIGINT)),
                  "term": str(signal.getsignal(signal.SIGTERM)), "hup": str(signal.getsignal(signal.SIGHUP)),
                  "session": os.getsid(0) == os.getpid(),
                  "stdin": sys.stdin.read()}), flush=True)
atexit.register(lambda: print("atexit", flush=True))
if what == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
elif what == "exit":
    sys.exit(5)
elif what == "message":
    sys.exit("a message")
elif what == "raise":
    raise ValueError("boom")
elif what == "ctrl-c":
    raise KeyboardInterrupt
elif what == "sleep":
    print("sleeping", flush=True)
    time.sleep(60)
'''


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe.py").write_text(PROBE)
    return folder


def _both(probe_dir: Path, what: str) -> list[Child | WarmChild]:
    env = {**env_for(0, 1, 0), "PROBE": what}
    children = [spawn(["-m", "probe", what], env, probe_dir), spawn(["-m", "probe", what], env, probe_dir, warm=False)]
    assert [type(c).__name__ for c in children] == ["WarmChild", "Child"]
    return children


@pytest.mark.parametrize("what", ["plain", "thread", "exit", "message", "raise", "ctrl-c"])
def test_a_warm_start_ends_as_a_cold_one_does(probe_dir: Path, what: str) -> None:
    warm, cold = _both(probe_dir, what)
    assert warm.wait(120) == cold.wait(120), (warm.output(), cold.output())
    (warm_out, warm_err), (cold_out, cold_err) = warm.output(), cold.output()
    assert warm_out == cold_out
    state = json.loads(warm_out.splitlines()[0])
    assert state["name"] == "__main__" and state["argv"] == [str(probe_dir / "probe.py"), what]
    assert state["cwd"] == state["path0"] == str(probe_dir) and state["probe"] == what and state["session"]
    assert state["stdin"] == ""  # /dev/null
    # tracebacks name the same lines; the warm one has runpy's frames on top of them
    assert warm_err.splitlines()[-1:] == cold_err.splitlines()[-1:]
    assert ("Traceback" in warm_err) == ("Traceback" in cold_err)
    expected = {"plain": 0, "thread": 0, "exit": 5, "message": 1, "raise": 1, "ctrl-c": -signal.SIGINT}
    assert warm.returncode == expected[what]


def test_a_signal_from_outside_ends_a_warm_start_as_a_cold_one(probe_dir: Path) -> None:
    children = _both(probe_dir, "sleep")
    until(lambda: all("sleeping" in c.output()[0] for c in children), "both children sleeping", procs=children)
    for c in children:
        c.send_signal(signal.SIGTERM)
    assert [c.wait(60) for c in children] == [-signal.SIGTERM] * 2
    assert children[0].poll() == -signal.SIGTERM


@pytest.mark.parametrize("ignored", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_the_test_process_ignores_stays_ignored_as_in_a_cold_start(
        probe_dir: Path, ignored: signal.Signals) -> None:
    """exec keeps an ignored signal ignored (and CPython then installs no KeyboardInterrupt for SIGINT): a suite
    started in the background (`make test &`) or under nohup ran its warm children with Ctrl-C live, and this
    module's comparison failed there."""
    before = signal.signal(ignored, signal.SIG_IGN)
    try:
        children = _both(probe_dir, "plain")
    finally:
        signal.signal(ignored, before)
    assert [c.wait(120) for c in children] == [0, 0]
    warm_out, cold_out = (c.output()[0] for c in children)
    assert warm_out == cold_out
    assert json.loads(warm_out.splitlines()[0])["int" if ignored == signal.SIGINT else "hup"] == str(signal.SIG_IGN)


def test_an_environment_read_at_import_gets_a_server_of_its_own(probe_dir: Path) -> None:
    """A server imported torch with its environment: a child that sets a variable torch reads at import would not
    see it there, so it is forked by a server started with it -- and one that sets any other variable is not."""
    env = env_for(0, 1, 0)
    plain, other = (spawn(["-m", "probe", "plain"], {**env, "PEKD_ANYTHING": x}, probe_dir) for x in "12")
    stack = spawn(["-m", "probe", "plain"], {**env, "TORCH_SHOW_CPP_STACKTRACES": "1"}, probe_dir)
    assert isinstance(plain, WarmChild) and isinstance(stack, WarmChild)
    assert plain.server is other.server and stack.server is not plain.server
    assert [c.wait(120) for c in (plain, other, stack)] == [0, 0, 0]


def test_a_warm_start_finds_torch_imported_and_a_cold_one_does_not(probe_dir: Path) -> None:
    """What the server is for: a child that imports torch finds it imported already (and pekd, whose imports
    have side effects, not)."""
    (probe_dir / "imports.py").write_text("import sys\n"
                                          "print(sorted(m for m in ('torch', 'pekd') if m in sys.modules))\n")
    children = [spawn(["-m", "imports"], env_for(0, 1, 0), probe_dir, warm=warm) for warm in (True, False)]
    assert [c.wait(120) for c in children] == [0, 0]
    assert [c.output()[0] for c in children] == ["['torch']\n", "[]\n"]


def _state(pid: int) -> str | None:
    """The process's state letter, None once it is gone (reaped between the open and the read: ESRCH)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_an_ended_child_keeps_its_pid_until_the_test_has_seen_its_end(probe_dir: Path) -> None:
    """As with subprocess.Popen: an ended child stays a zombie, its pid its own, so a test that signals it until
    poll() says it ended never signals another process; wait() reaps it."""
    child = spawn(["-m", "probe", "exit"], env_for(0, 1, 0), probe_dir)
    until(lambda: _state(child.pid) == "Z", "the child to end")
    os.kill(child.pid, signal.SIGTERM)  # no ProcessLookupError: still this child's pid
    assert child.wait(60) == 5
    until(lambda: _state(child.pid) is None, "the server to reap it", timeout=30)


def test_a_server_whose_test_process_is_gone_ends_and_leaves_nothing_in_tmp(probe_dir: Path) -> None:
    """An xdist worker ends without closing anything: its servers see the end of their stdin and must remove their
    socket and its folder themselves (49 such folders had piled up in /tmp before they did)."""
    server = Server(env_for(0, 1, 0), REPO)
    child = WarmChild(server, "probe", ["plain"], env_for(0, 1, 0), probe_dir)
    assert child.wait(120) == 0 and os.path.exists(server.path)
    assert server.proc.stdin is not None
    server.proc.stdin.close()  # what the end of the test process does
    assert server.proc.wait(60) == 0, server.output()
    assert not os.path.exists(os.path.dirname(server.path))
