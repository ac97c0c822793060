"""The chaos test: one run through an interruption of every kind in a random order, at random steps (SIGUSR2,
SIGTERM, SIGKILL, SIGKILL inside a checkpoint write), restarted with the same command each time (tests/chaos.py
says what must hold). ~60-90 s on a loaded 2-core machine: six starts of `python -m pekd.train`. The long version
with N >= 50 is `make soak` (bench/soak.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests import chaos as c
from tests.test_faults import temp_files

pytestmark = pytest.mark.slow


def test_a_run_survives_every_kind_of_interruption_in_a_row(tmp_path: Path) -> None:
    rng = random.Random(17)
    kinds = rng.sample(c.KINDS, len(c.KINDS))
    figures = c.Figures()
    c.reference_run(tmp_path / "reference", 1, figures)
    c.chaos(tmp_path / "chaos", 1, kinds, rng, figures)
    print(figures.summary())
    assert sum(figures.interruptions.values()) == len(c.KINDS)
    c.assert_same_weights(c.final_weights(tmp_path / "chaos"), c.final_weights(tmp_path / "reference"))
    c.check_audit(tmp_path / "chaos", tmp_path / "reference")
    c.newest_verified_step(tmp_path / "chaos")
    assert not temp_files(tmp_path / "chaos"), "a killed writer's temp file was left behind"
