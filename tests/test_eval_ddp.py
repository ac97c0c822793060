"""Under DDP the reported accuracy is the exported model's: every rank evaluates with rank 0's BatchNorm buffers."""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from pekd.data.pipelines import build_eval_loader
from pekd.data.sources import run_sources
from pekd.engine.evaluation import Inputs, evaluate
from pekd.models import build_model, load_weights
from pekd.train import compose_config
from tests.train_helpers import TINY, train

pytestmark = pytest.mark.slow
CHECKSUMS = re.compile(r"this rank's checksum (\S+), rank 0's (\S+)")


def checksums(run_dir: Path, rank: int) -> tuple[float, float]:
    """(this rank's own, rank 0's) buffer checksums that rank `rank` logged before its evaluation."""
    [found] = CHECKSUMS.findall((run_dir / "logs" / f"rank{rank}.log").read_text())
    return float(found[0]), float(found[1])


def test_two_rank_top1_is_that_of_student_pt(tmp_path):
    run_dir = tmp_path / "run"
    args = TINY + ["method=ce", "teacher=none", "trainer.epochs=1", f"run_dir={run_dir}"]
    results = train(args, world=2)
    assert all(rc == 0 for rc, _ in results), [err[-2000:] for _, err in results]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["world_size"] == 2

    # the ranks' BatchNorm statistics had drifted apart (each follows its own micro-batches) ...
    own0, from0_on0 = checksums(run_dir, 0)
    own1, from0_on1 = checksums(run_dir, 1)
    assert own0 == from0_on0 == from0_on1 and own1 != own0, "rank 1's buffers differ from rank 0's before eval"

    # ... and the reported top-1 is exactly that of student.pt evaluated by one process over the same eval set
    cfg = compose_config(args)
    train_src, val_src = run_sources(cfg)
    model = build_model(cfg.model.name, train_src.num_classes, train_src.in_chans)
    load_weights(model, str(run_dir / "student.pt"))
    model.to(memory_format=torch.channels_last)  # as the trainer runs it (trainer.channels_last=true)
    loader = build_eval_loader(val_src, cfg.data, rank=0, world=1)
    result = evaluate(model, loader, Inputs(train_src.mean, train_src.std, torch.device("cpu"),
                                            torch.channels_last), nullcontext)
    assert result is not None
    assert (result[0], result[1]) == (res["last_top1"], res["last_top5"])
