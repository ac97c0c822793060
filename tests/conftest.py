"""Shared by every test file: no child process outlives the test that started it, and tests meant for the CPU
keep their child processes off a GPU."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.train_helpers import LIVE

# "" (like "-1") means "no GPU allocated", not "GPUs allocated but unusable": pekd.engine.devices treats both as
# hidden on purpose, so a CPU test's child neither trains on the node's GPU nor gets the device error.
NO_GPU = ""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; its child processes may see the node's GPUs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test` runs three pytest-xdist workers (`-n 3 --dist loadgroup`) on two cores: most tests' children
    train on one thread, and with warm starts (tests/warm_start.py) a worker waiting on a SLURM job or a child's
    signal leaves a core idle that a third fills (docs/development.md). Each module's tests stay on one worker, so
    its module-scoped fixtures (reference runs, banks, data sets, the fault model's fork server) are built once;
    the tests that use the local SLURM cluster stay together on one worker, which starts the session's one
    cluster. They come first: the longest group (16 minutes, mostly waiting on the scheduler) started last would
    end last, alone."""
    def uses_slurm(item: pytest.Item) -> bool:
        return "slurm_cluster" in getattr(item, "fixturenames", ())

    items.sort(key=lambda item: not uses_slurm(item))  # stable: each part keeps its order
    for item in items:
        item.add_marker(pytest.mark.xdist_group("slurm" if uses_slurm(item) else item.nodeid.split("::")[0]))


@pytest.fixture(autouse=True)
def _cpu_children(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's expectations are the CPU's (gloo, amp=auto -> bf16/fp32, sync_bn refused, timings): run on a
    GPU node, the rank processes a test starts would otherwise pick the GPU up. Only the environment children
    inherit changes: this process's CUDA state was fixed when collection first asked torch about CUDA, so
    in-process tests that check `torch.cuda.is_available()` still see the GPU. Tests marked `cuda` keep it for
    their children too."""
    if request.node.get_closest_marker("cuda") is None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", NO_GPU)


@pytest.fixture(autouse=True)
def _kill_children() -> Iterator[None]:
    """Kill the process group of every child started through tests.train_helpers (`Child`) during the test --
    finished or not: a failed assertion, a timeout or an exception must not leave a trainer, or its DataLoader
    workers, running on into the next tests."""
    yield
    while LIVE:
        LIVE.pop().kill_group()


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
_SESSION_DISPOSITIONS = {s: signal.getsignal(s) for s in _STOP_SIGNALS}


@pytest.fixture(autouse=True)
def _stop_signal_dispositions() -> Iterator[None]:
    """An in-process run that was stopped leaves SIGTERM/SIGUSR2 ignored (pekd.engine.preemption: a repeated signal
    must not kill the checkpointed process). Ignored dispositions are inherited across exec, so every later child
    of this pytest process would ignore SIGTERM too (found when the toy study's SIGTERM did nothing in the full
    suite): restore the session's dispositions after each test."""
    yield
    for s, handler in _SESSION_DISPOSITIONS.items():
        signal.signal(s, handler)
