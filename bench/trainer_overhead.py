"""`python -m bench.trainer_overhead [--device cpu|cuda] [--rounds 7 --threads 1]`: what pekd's Trainer adds.

Why: the trainer does more per step than a textbook loop (per-step reseeding, a per-step lr schedule, loss terms
kept for a finiteness check and a stop flag agreed on across ranks every trainer.sync_every_steps steps, AMP
scaling, meters, periodic logging); this bench shows what that costs next to the model's own work. Goal: trainer
step <= 1.03 x bare step.

PEFD resnet32x4 -> resnet8x4 (experiment=cifar100_r32x4_r8x4: q=3, batch 64, 32px, pekd's defaults
channels_last and trainer.amp=auto), teacher features given (the teacher's cost is not the trainer's), one fixed
batch. Both candidates drive the SAME TrainModule, optimizer and batch, interleaved (bench/timing.py); one call
of either is trainer.sync_every_steps optimizer steps, so the trainer's periodic check comes once per call, at
the rate a real run has it, and the figures are per step:

- trainer: `Trainer._steps` itself -- the loop pekd.train runs within an epoch -- fed by an iterator over the
  fixed batch instead of the (prefetching) loader: the per-step reseed, `train_step` (input preparation, the
  teacher call, the forward under autocast, the scaled backward), the pending loss checks and their periodic
  all-reduce (a no-op in one process) and device->host read, `optimizer_step` (GradScaler step and update,
  zero_grad, the per-step schedule), the meters and counters, and the log line and TensorBoard scalars every
  trainer.log_every_steps steps (a Metrics made as fit() makes it, writing into a temporary run directory).
  trainer.max_steps is moved one call ahead, so `_steps` returns after sync_every_steps steps, on a step that is
  a check step anyway; the checkpoint that reaching max_steps writes is a per-run cost and is replaced by a no-op.
- bare: `module(x, y, f_t)`, `sum(losses).backward()`, `optimizer.step()`, `zero_grad()` under the same autocast
  (and a GradScaler where the trainer's is enabled: fp16, on GPUs without bf16), on the same input tensor.

The batch is handed over already normalised in the run's memory format, so the trainer's input preparation has
nothing to convert (normalising uint8 is pipeline work that a bare loop has to do somewhere too). On a machine
shared with other jobs, --threads 1 gives steadier figures: two threads on two busy cores wait for each other.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import torch

from bench.official_loop import CLASSES, fixed_batch, machine, normalised, synchronize
from bench.timing import interleaved, table
from pekd.data.batch import Batch
from pekd.data.order import Plan
from pekd.data.sources import CIFAR100_MEAN, CIFAR100_STD
from pekd.engine.distributed import DistEnv
from pekd.engine.metrics import Metrics
from pekd.engine.precision import autocast
from pekd.engine.preemption import StopSignal
from pekd.engine.trainer import Trainer
from pekd.methods import TrainModule, build_method
from pekd.models import build_model, feature_dim
from pekd.train import compose_config

GOAL = 1.03


@dataclass
class FixedLoader:
    """All the trainer's step loop reads from its loader besides the batches (for its log line)."""

    steps_per_epoch: int


class GivenFeatures:
    """The same teacher-feature tensor every step, as the bare loop passes it: no copy, no conversion."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def __call__(self, images: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, None]:
        return self.features, None


def build(device: torch.device, batch_size: int, run_dir: Path) -> tuple[Trainer, Batch, torch.Tensor]:
    """The recipe's Trainer (as pekd.train builds it), its input batch and the teacher features both loops use."""
    cfg = compose_config(["experiment=cifar100_r32x4_r8x4", "teacher.weights=random-init", "data.workers=0",
                          f"data.batch_size={batch_size}", "trainer.progress=false", f"run_dir={run_dir}"])
    raw = fixed_batch(batch_size, device)
    g = torch.Generator().manual_seed(1)
    feat_t = torch.relu(torch.randn(batch_size, feature_dim(cfg.teacher.name), generator=g))
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.model.name, CLASSES)
    method = build_method(cfg.method, student.feature_dim, feat_t.shape[1])
    plan = Plan.make(batch_size, 1)
    trainer = Trainer(cfg, DistEnv(0, 1, 0, device), run_dir, TrainModule(student, method),
                      GivenFeatures(feat_t.to(device)), FixedLoader(steps_per_epoch=10**9), None, CIFAR100_MEAN,
                      CIFAR100_STD, plan)
    x = normalised(raw).contiguous(memory_format=trainer.memory_format)
    return trainer, Batch(x, raw.labels, raw.index, raw.view), feat_t.to(device)


def trainer_steps(trainer: Trainer, batch: Batch, stop: StopSignal) -> Callable[[], None]:
    """sync_every_steps optimizer steps through the trainer's own step loop (see the module doc)."""
    trainer.save_checkpoint = lambda: None  # type: ignore[method-assign]  # reaching max_steps checkpoints
    trainer.metrics = Metrics(trainer.run_dir, trainer.env.is_main, trainer.progress.global_step)  # as fit() does
    trainer.module.train()
    micro, steps = repeat(batch), trainer.train_loader.steps_per_epoch

    def run() -> None:
        trainer.tc.max_steps = trainer.progress.global_step + trainer.tc.sync_every_steps
        status = trainer._steps(stop, steps, micro, None, None)
        assert status == "stopped", status
        synchronize(trainer.device)

    return run


def bare_steps(trainer: Trainer, batch: Batch, feat_t: torch.Tensor) -> Callable[[], None]:
    """As many steps of the textbook loop over the trainer's module and optimizer, in the same precision."""
    module, optimizer, device = trainer.module, trainer.optimizer, trainer.device
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.dtype == torch.float16)

    def run() -> None:
        for _ in range(trainer.tc.sync_every_steps):
            with autocast(device, trainer.dtype):
                _, losses = module(batch.images, batch.labels, feat_t, None)
                total = sum(losses.values())
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=1, help="calls (of sync_every_steps steps) per candidate per round")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default); 1 is steadier on a shared machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp, StopSignal() as stop:
        trainer, batch, feat_t = build(device, args.batch, Path(tmp) / "run")
        candidates = {"bare loop": bare_steps(trainer, batch, feat_t),
                      "pekd trainer": trainer_steps(trainer, batch, stop)}
        per_call = interleaved(candidates, rounds=args.rounds, reps=args.reps, warmup=1)
        assert trainer.metrics is not None
        trainer.metrics.close()
    k = trainer.tc.sync_every_steps
    times = {name: t / k for name, t in per_call.items()}
    dtype = "fp32" if trainer.dtype is None else str(trainer.dtype).removeprefix("torch.")
    print(f"\nPEFD resnet32x4 -> resnet8x4 (q=3), teacher features given, batch {args.batch}, 32px, amp {dtype}, "
          f"channels_last={trainer.tc.channels_last}; {machine(device)}; median of {args.rounds} rounds of "
          f"{args.reps} x {k} interleaved steps (trainer.sync_every_steps={k})\n")
    print(table(times, "bare loop", unit_items=args.batch))
    ratio = times["pekd trainer"] / times["bare loop"]
    print(f"\npekd trainer / bare loop = {ratio:.3f} (trainer overhead {100 * (ratio - 1):+.1f}%; goal <= "
          f"{100 * (GOAL - 1):.0f}%: {'met' if ratio <= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
