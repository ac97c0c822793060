"""A rank that cannot reach the rendezvous ends within PEKD_RENDEZVOUS_TIMEOUT with one error line naming the
address and why, instead of torch's env:// connect retrying for the whole process-group timeout (a first node whose
name did not resolve kept a 2-node job retrying for over 11 minutes).

The subprocess tests run a real rank 1 of a world of 2, as torchrun or SLURM would start it, against a name that
never resolves (.invalid, RFC 6761) and against a port on 127.0.0.1 where nothing listens.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from pekd.engine.distributed import (
    DEFAULT_RENDEZVOUS_TIMEOUT_S,
    RENDEZVOUS_TIMEOUT_ENV,
    rendezvous_timeout_s,
    wait_for_rendezvous,
)
from pekd.errors import PekdError
from tests.train_helpers import REPO, TINY, env_for, free_port

TIMEOUT_S = 5
# Rank 1's rendezvous alone, timed from after the imports (a loaded machine imports torch slowly).
TIMED_RANK = """
import time
from pekd.engine.distributed import init_distributed
from pekd.errors import user_errors_exit
start = time.monotonic()
try:
    user_errors_exit(init_distributed)()
finally:
    print(f"elapsed {time.monotonic() - start:.2f}", flush=True)
"""


def _rank_1(cmd: list[str], addr: str, port: int) -> subprocess.CompletedProcess[str]:
    env = env_for(1, 2, port) | {"MASTER_ADDR": addr, RENDEZVOUS_TIMEOUT_ENV: str(TIMEOUT_S)}
    return subprocess.run([sys.executable, *cmd], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT_S + 120)


@pytest.mark.parametrize("addr, reason", [("nonexistent.invalid", "name does not resolve"),
                                          ("127.0.0.1", "connection refused")])
def test_an_unreachable_master_is_one_error_within_the_timeout(addr: str, reason: str) -> None:
    port = free_port()  # closed again: nothing listens there
    proc = _rank_1(["-c", TIMED_RANK], addr, port)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach the rendezvous at {addr}:{port} within {TIMEOUT_S} s ({reason}"), line
    assert RENDEZVOUS_TIMEOUT_ENV in line  # and what to change if the master is merely slow
    elapsed = float(re.search(r"elapsed (\S+)", proc.stdout).group(1))
    print(f"\n{addr}: gave up after {elapsed:.1f} s")
    assert TIMEOUT_S <= elapsed <= TIMEOUT_S + 3


def test_training_with_an_unresolvable_master_prints_one_line() -> None:
    port = free_port()
    proc = _rank_1(["-m", "pekd.train", *TINY, "method=ce", "teacher=none"], "nonexistent.invalid", port)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach the rendezvous at nonexistent.invalid:{port} within {TIMEOUT_S} s "
                           "(name does not resolve"), line


def test_a_master_that_starts_late_is_waited_for() -> None:
    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_later() -> None:
        time.sleep(1.5)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    thread = threading.Thread(target=listen_later)
    start = time.monotonic()
    thread.start()
    try:
        wait_for_rendezvous("127.0.0.1", port, rank=1, timeout_s=20)
    finally:
        thread.join()
        listener.close()
    assert 1.5 <= time.monotonic() - start < 10


def test_rank_0_only_needs_the_name_to_resolve() -> None:
    start = time.monotonic()
    wait_for_rendezvous("127.0.0.1", free_port(), rank=0, timeout_s=20)  # it is about to host the store itself
    assert time.monotonic() - start < 1
    with pytest.raises(PekdError, match="name does not resolve"):
        wait_for_rendezvous("nonexistent.invalid", free_port(), rank=0, timeout_s=0.5)


def test_the_rendezvous_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RENDEZVOUS_TIMEOUT_ENV, raising=False)
    assert rendezvous_timeout_s() == DEFAULT_RENDEZVOUS_TIMEOUT_S == 120
    monkeypatch.setenv(RENDEZVOUS_TIMEOUT_ENV, "30")
    assert rendezvous_timeout_s() == 30
    for bad in ("soon", "0", "-5", "nan"):
        monkeypatch.setenv(RENDEZVOUS_TIMEOUT_ENV, bad)
        with pytest.raises(PekdError, match=f"{RENDEZVOUS_TIMEOUT_ENV}='{bad}' is not a positive number"):
            rendezvous_timeout_s()
