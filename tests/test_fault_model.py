"""The model-based fault test (issue 24, tests/fault_model.py): generated sequences of events over run
directories' lives -- starts, resumes, reruns, SIGKILL / SIGTERM / SIGUSR2 / SIGINT at chosen points (inside writes
too), a full disk, a read-only remount, damaged and deleted files, evaluations -- each checked against the fault
model's invariants after every event. The suite runs a fixed set (hypothesis seeds 0-3: the same sequences on every
run, so CI is repeatable); `make soak` (bench/fault_model.py) runs thousands more, with fresh seeds, signals from
outside and shrinking. A failure prints the sequence that led to it, step by step, and hypothesis's steps to replay
it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.fault_model import Env, machine, open_env

pytestmark = pytest.mark.slow

PARTS, SEQUENCES = 4, 50  # 200 sequences, in four tests: each stays far inside pytest's per-test timeout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    env = open_env(tmp_path_factory.mktemp("fault-model"))
    yield env
    env.server.close()


@pytest.mark.parametrize("part", range(PARTS))
def test_generated_sequences_keep_every_invariant(env: Env, part: int) -> None:
    """50 sequences of up to 4 events after the first start. No shrinking here (the failing sequence is printed
    as it was found, within the test's timeout); the soak shrinks to a minimal one."""
    before = env.figures["sequences"]
    model = machine(env)
    run_state_machine_as_test(seed(part)(lambda: model()), settings=settings(
        max_examples=SEQUENCES, stateful_step_count=4, deadline=None, database=None, print_blob=True,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.reuse, Phase.generate]))
    assert env.figures["sequences"] - before >= SEQUENCES, env.figures
