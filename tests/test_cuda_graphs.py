"""trainer.compile=reduce-overhead (CUDA graphs of the step) where graphs cannot be: one log line, then the eager
step itself -- the same weights bit for bit, so checkpoints, resume and the stop at a step boundary are eager's.
Graphed vs eager on a GPU is bench/gpu_check's `pipelined_train` row."""

from __future__ import annotations

import logging

import pytest
import torch

from pekd.engine.compilation import compile_mode, graph_blocker
from tests.test_compile import pefd_trainer

CUDA = torch.device("cuda")


def test_compile_settings_name_torch_compile_modes():
    """trainer.compile=true keeps meaning torch.compile's default mode."""
    assert [compile_mode(s) for s in (False, True, "default", "reduce-overhead")] == \
        [None, "default", "default", "reduce-overhead"]


@pytest.mark.parametrize(("where", "blocked_by"), [
    ({"device": torch.device("cpu")}, "need a CUDA device"),
    ({"distributed": True}, "DDP"),
    ({"accum": 2}, "accumulates 2 micro-batches"),
    ({"on_corrupt": "skip"}, "on_corrupt=skip"),
])
def test_graphs_are_refused_where_they_would_not_give_the_eager_step(where, blocked_by):
    run = {"device": CUDA, "distributed": False, "accum": 1, "on_corrupt": "error"}
    assert graph_blocker(**run) is None  # one CUDA process, one micro-batch a step, fixed shapes
    assert blocked_by in graph_blocker(**{**run, **where})


def test_reduce_overhead_on_cpu_says_so_once_and_trains_as_eager(tmp_path, caplog):
    """Three optimizer steps of PEFD with an online teacher: every parameter, buffer and optimizer state equal."""
    with caplog.at_level(logging.INFO, logger="pekd"):
        graphed = pefd_trainer("reduce-overhead", tmp_path / "graphed")
    said = [r.getMessage() for r in caplog.records if "CUDA graphs" in r.getMessage()]
    assert len(said) == 1 and "runs eager" in said[0] and "CUDA device" in said[0], said
    eager = pefd_trainer(False, tmp_path / "eager")
    batches = iter(eager.train_loader.epoch(0))
    for batch in (next(batches) for _ in range(3)):
        for trainer in (eager, graphed):
            trainer.module.train()
            trainer.train_step([batch])
            trainer.optimizer_step()
    a, b = eager.state_dict(), graphed.state_dict()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["optimizer"]["state"][0]["momentum_buffer"], b["optimizer"]["state"][0]["momentum_buffer"])
