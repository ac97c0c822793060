"""trainer.analyze=true: pekd.analyze's diagnostics from the final evaluation's own forward pass.

The final evaluation runs the student over the whole test set; pekd.analyze would run it over the test set again.
With this on, the trainer hands every batch of its final evaluation (model input, labels, indices, the student's
features and logits) to FinalEvalAnalysis, which adds the teacher's outputs (one forward per set and process,
kept in host memory and shared by the runs a process trains), the projector ensemble's outputs (the run's own,
live projectors), and updates the same accumulators pekd.analyze uses (pekd.science.diagnostics). When the run
completes, one pass over the training set with the evaluation transform gives the train top-1 (the gap's other
half) and analysis.json is written: the object pekd.analyze writes for student.pt, with test_pass "final evaluation".
With trainer.amp=off the two are equal (tested); with autocast the diagnostics read the evaluation's autocast
outputs, as the run's own top-1 does.

One process only: under DDP each rank evaluates its own shard. A run whose final evaluation happened in an
earlier process (it was stopped between that evaluation and the end) writes no analysis.json and says so;
`python -m pekd.analyze RUN_DIR` measures it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pekd.data.batch import Batch
from pekd.methods.base import TrainModule
from pekd.science.diagnostics import Meters, Models, observe, results

log = logging.getLogger("pekd")


class FinalEvalAnalysis:
    """The trainer's final evaluation observer (start() before it) and finish() once the run completes."""

    def __init__(self, cfg: Any, run_dir: Path, module: TrainModule, train_src: Any, test_src: Any,
                 device: torch.device, memory_format: torch.memory_format) -> None:
        from pekd.analyze import has_teacher, teacher_cache
        from pekd.models import build_model, load_weights

        self.cfg, self.run_dir, self.module = cfg, run_dir, module
        self.train_src, self.test_src, self.device, self.memory_format = train_src, test_src, device, memory_format
        teacher = None
        if has_teacher(cfg):
            teacher = build_model(cfg.teacher.name, train_src.num_classes, train_src.in_chans)
            load_weights(teacher, str(cfg.teacher.weights))
            teacher.to(device, memory_format=memory_format).eval()
        self.models = Models(module.student, teacher, getattr(module.method, "projector", None),
                             logit_projector=getattr(module.method, "logit_projector", None))
        self.caches = {split: teacher_cache(cfg, src, split) if teacher is not None else None
                       for split, src in (("test", test_src), ("train", train_src))}
        self.meters: Meters | None = None

    def start(self) -> Callable[[torch.Tensor, Batch, torch.Tensor, torch.Tensor], None]:
        """A fresh set of meters for an evaluation that is about to run (a stopped one is redone from scratch)."""
        self.meters = Meters()
        return self.observe

    @torch.no_grad()
    def observe(self, x: torch.Tensor, batch: Batch, feat: torch.Tensor, logits: torch.Tensor) -> None:
        assert self.meters is not None
        observe(self.meters, self.models, x, batch.labels, batch.index, feat, logits, self.caches["test"], True)

    @torch.no_grad()
    def finish(self) -> None:
        """The train pass and analysis.json; nothing (and a log line) if this process did not see the final
        evaluation."""
        from pekd.analyze import measure, train_eval_data
        from pekd.data.pipelines import build_eval_loader
        from pekd.engine.rundir import write_json

        if self.meters is None or self.meters.student.n == 0:
            log.info("trainer.analyze: the final evaluation ran in an earlier process; no analysis.json written "
                     "(run `python -m pekd.analyze %s`)", self.run_dir)
            return
        student = self.module.student
        was = student.training
        student.eval()
        try:
            loader = build_eval_loader(self.train_src, train_eval_data(self.cfg), rank=0, world=1)
            train = measure(loader, self.models, self.train_src.mean, self.train_src.std, self.device,
                            self.memory_format, features=False, cached=self.caches["train"])
        finally:
            student.train(was)
        out = results(self.meters, train, self.models, "student.pt", self.test_src.identity(),
                      self.train_src.identity(), "final evaluation")
        write_json(self.run_dir / "analysis.json", out)
        log.info("trainer.analyze: wrote %s from the final evaluation's forward pass", self.run_dir / "analysis.json")
