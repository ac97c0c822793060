"""What a run reports while it trains: the train meter, log lines, TensorBoard scalars (also in metrics.csv and an
optional tracker, pekd.engine.tracker) and the progress bar.

The meter keeps its sums on the device: the training step never waits for the device to report a number, and
the one read-back (an all-reduce of every sum at once) happens at a log step.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from pekd.engine.distributed import all_reduce_sum
from pekd.engine.files import write_error
from pekd.engine.metrics_csv import MetricsCSV
from pekd.engine.progress import Progress, duration_text
from pekd.engine.tracker import WandbTracker

log = logging.getLogger("pekd")


@dataclass(frozen=True)
class TrainStats:
    """Means over every rank's images since the last log step."""

    terms: dict[str, float]  # mean loss per term
    top1: float  # percent
    images: float
    seconds: float

    @property
    def loss(self) -> float:
        return sum(self.terms.values())

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


class TrainMeter:
    """Loss terms (summed over images), correct predictions and images since the last log step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.terms: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), device=self.device, dtype=torch.float64)
        self.images = 0
        self.t0 = time.perf_counter()

    def add(self, terms: dict[str, torch.Tensor], correct: torch.Tensor, images: int) -> None:
        """terms: each loss term times its images, as train_step returns them."""
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0) + v
        self.correct = self.correct + correct.to(torch.float64)
        self.images += images

    def reduce(self) -> TrainStats:
        """Every rank's sums in one all-reduce (a collective: every rank calls it at the same step), then reset."""
        names = sorted(self.terms)
        packed = torch.stack([self.terms[k].to(torch.float64) for k in names]
                             + [self.correct, torch.tensor(float(self.images), device=self.device,
                                                           dtype=torch.float64)])
        all_reduce_sum(packed)
        values = packed.tolist()
        n = max(values[-1], 1.0)
        stats = TrainStats({k: values[i] / n for i, k in enumerate(names)}, 100.0 * values[-2] / n, values[-1],
                           time.perf_counter() - self.t0)
        self.reset()
        return stats


def steps_left(p: Progress, steps_per_epoch: int, epochs: int, max_steps: int) -> int:
    """Optimizer steps to the end of the run: to the end of its last epoch, or to trainer.max_steps (0: none)
    when that comes first."""
    left = (epochs - p.epoch) * steps_per_epoch - p.step_in_epoch
    return max(min(left, max_steps - p.global_step) if max_steps else left, 0)


class Metrics:
    """Log lines on every rank (its own log file); TensorBoard events, metrics.csv and the tracker on rank 0."""

    def __init__(self, run_dir: Path, is_main: bool, resumed_step: int, tracker: WandbTracker | None = None,
                 check: Callable[[], None] | None = None, evaluation_pending: bool = False) -> None:
        # Each (step, tag) once, whatever the crash point: TensorBoard drops every event from the checkpoint's step
        # on (purge_step; step 0 without a checkpoint, so a killed first start's events go too), metrics.csv drops
        # the rows the checkpoint had not seen (pekd.engine.metrics_csv), and the rows it keeps at that step are
        # written to TensorBoard again; what follows is logged anew.
        # `check` raises when this process no longer owns the run (its lease was taken over): metrics.csv is one
        # file per run, so an old instance appending to it would interleave rows with the new owner's.
        self.check = check
        self.writer, self.csv = None, None
        if is_main:
            self.csv = MetricsCSV(run_dir / "metrics.csv", resumed_step, evaluation_pending)
            # metrics.csv deleted, emptied or damaged, or the step simply not a log step: TensorBoard's own events
            kept = self.csv.at_resume
            if not kept or self.csv.damaged:
                kept = {**_tensorboard_at(run_dir / "tb", resumed_step, evaluation_pending), **kept}
            try:  # read before this writer's purge event exists
                self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resumed_step)
            except OSError as e:
                raise write_error(run_dir / "tb", e, "write TensorBoard events in") from None
            for tag, v in kept.items():
                self.writer.add_scalar(tag, v, resumed_step)
            self.flush()
        self.tracker = tracker
        self.logged_step = resumed_step  # the global step of the last log line: the ETA's pace counts from it

    def train(self, p: Progress, steps_per_epoch: int, stats: TrainStats, lr: float, epochs: int,
              max_steps: int) -> None:
        """The log line of a log step, with the run's ETA: the steps left to its end (trainer.epochs, or
        trainer.max_steps if that comes first) at the pace of the steps since the last log line. Evaluations
        are not in that pace (a new meter times each epoch's steps), so the ETA is the training still to do."""
        left = steps_left(p, steps_per_epoch, epochs, max_steps)
        pace = (p.global_step - self.logged_step) / max(stats.seconds, 1e-9)
        self.logged_step = p.global_step
        log.info("epoch %d step %d/%d (global %d): loss %.4f (%s) lr %.4g, %.0f images/s, eta %s", p.epoch,
                 p.step_in_epoch, steps_per_epoch, p.global_step, stats.loss,
                 " ".join(f"{k} {v:.4f}" for k, v in stats.terms.items()), lr, stats.images_per_s,
                 duration_text(left / pace))
        self.scalars(p.global_step, {**{f"train/loss_{k}": v for k, v in stats.terms.items()},
                                     "train/loss": stats.loss, "train/top1": stats.top1, "train/lr": lr,
                                     "train/images_per_s": stats.images_per_s})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log `values` at `step` everywhere, flushed before returning: nothing waits in TensorBoard's queue for a
        background thread to write it later -- after a freeze in which this process may have lost its lease."""
        if self.check is not None:
            self.check()
        if self.writer is not None:
            for tag, v in values.items():
                self.writer.add_scalar(tag, v, step)
            self.flush()
        if self.csv is not None:
            if self.check is not None:  # again: a freeze during TensorBoard's writes (milliseconds) could lose the
                self.check()  # lease, and these rows would land among the new owner's (a suite run caught one)
            self.csv.add(step, values)
        if self.tracker is not None:
            self.tracker.log(step, values)

    def flush(self) -> None:
        if self.writer is not None:
            try:
                self.writer.flush()
            except OSError as e:
                raise write_error(self.writer.log_dir, e, "write TensorBoard events in") from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.csv is not None:
            self.csv.close()
        if self.tracker is not None:
            self.tracker.close()


def _tensorboard_at(folder: Path, step: int, evaluation_pending: bool) -> dict[str, float]:
    """The scalars TensorBoard holds at `step` (but a pending evaluation's): what is written again after the purge
    when metrics.csv, the usual source, holds none at that step. Reads every events file: about a second for a
    long run's, once per resume."""
    if not step or not folder.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its notices of purged events are the point here
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)
            if e.step == step and not (evaluation_pending and tag.startswith("val/"))}


def progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar over an epoch's steps on rank 0's console when that is a terminal, or None.

    Its carriage-return frames go to the console only, never into logs/rank<r>.out (which tees the console), and
    off a terminal (SLURM's .err, a pipe) there is no bar: the log lines every trainer.log_every_steps say it."""
    from pekd.engine.logs import Tee

    console = sys.stderr.console if isinstance(sys.stderr, Tee) else sys.stderr
    if not enabled or console is None or not console.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, file=console)
