"""Randomness has owners: the training seed varies a run, the data split fixes which images it trains and is
tested on, so a seed sweep compares runs on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pekd.data.sources import build_source, run_sources
from pekd.errors import PekdError
from pekd.train import compose_config, run
from tests.train_helpers import TINY, final_model

SUBSETS = ["data.subset=320", "data.val_subset=100", "method=ce", "teacher=none", "trainer.epochs=1",
           "trainer.milestones=[1]", "trainer.audit_samples=true"]


def _trained(run_dir: Path) -> set[int]:
    lines = (run_dir / "logs" / "samples-rank0.txt").read_text().split("\n")
    return {int(i) for line in lines if line for i in line.split()[2:]}


def test_training_seeds_share_the_data_split_and_the_test_set(tmp_path: Path) -> None:
    results = {}
    for seed in (0, 1):
        run_dir = tmp_path / f"s{seed}"
        run(compose_config([*TINY, *SUBSETS, f"seed={seed}", f"run_dir={run_dir}"]))
        results[seed] = json.loads((run_dir / "results.json").read_text())
    r0, r1 = results[0], results[1]
    assert r0["eval_set"] == r1["eval_set"] and r0["eval_set"]["n"] == 100 and "indices_sha256" in r0["eval_set"]
    assert r0["train_set"] == r1["train_set"] and r0["train_set"]["n"] == 320
    assert r0["seeds"] == {"train": 0, "split": 0, "bank": 0} and r1["seeds"]["train"] == 1
    # Same samples trained on (one epoch of 10 steps of 32 covers all 320), in another order, from another init.
    assert _trained(tmp_path / "s0") == _trained(tmp_path / "s1") and len(_trained(tmp_path / "s0")) == 320
    order0 = (tmp_path / "s0" / "logs" / "samples-rank0.txt").read_text()
    assert order0 != (tmp_path / "s1" / "logs" / "samples-rank0.txt").read_text()
    w0, w1 = final_model(tmp_path / "s0"), final_model(tmp_path / "s1")
    assert any(not np.array_equal(w0[k].numpy(), w1[k].numpy()) for k in w0)


def test_the_split_seed_alone_moves_the_subsets() -> None:
    base = compose_config([*TINY, *SUBSETS])
    other_seed = compose_config([*TINY, *SUBSETS, "seed=7"])
    other_split = compose_config([*TINY, *SUBSETS, "data.split_seed=1"])
    ids = [tuple(s.identity() for s in run_sources(c)) for c in (base, other_seed, other_split)]
    assert ids[0] == ids[1]
    assert ids[0][0] != ids[2][0] and ids[0][1] != ids[2][1]


def test_a_subset_larger_than_the_data_is_an_error() -> None:
    with pytest.raises(PekdError, match="subset of 5000 samples of digits/train, which has 1437"):
        build_source("digits", "", "train").subset(5000, 0)
