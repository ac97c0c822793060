"""pytest fixtures for tests that need the real scheduler: one local SLURM cluster per test session.

Use from a test file with `from tests.slurm_fixture import slurm_cluster, slurm_env  # noqa: F401`.
`slurm_cluster` is the session's running `LocalCluster` (its `env()` and `run()` talk to it); `slurm_env`
also points this test's os.environ at it, because submitit calls sbatch/sacct/scancel with the process
environment and those need SLURM_CONF and the sacct stand-in on PATH.

Two fake nodes of two CPUs each: enough for a two-node gloo job or four one-task array jobs at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from slurm.local_cluster import LocalCluster


def wait_for(predicate, timeout_s: float, what: str) -> None:
    """Poll until predicate() is true; a clear assertion names what never happened."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Start the cluster under the session's tmp dir (kept by pytest for post-mortems: logs are in log/)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("slurm"), nodes=2, cpus=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm_env(slurm_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    """The session cluster, with this test's os.environ pointing at it (undone after the test)."""
    for key, value in slurm_cluster.env().items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)
    return slurm_cluster
