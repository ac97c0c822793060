"""`python -m bench.teacher_modes [--size 64 --batch 64 --rounds 7] [overrides]`: online teacher vs feature bank.

PEFD resnet34 -> resnet18 (the ImageNet recipe, experiment=imagenet_r34_r18) on generated images at a small
resolution, on this machine's CPU. A bank is built with `pekd.teacher.precompute` for the same config, then the
trainer's own optimizer step (Trainer.train_step + SGD update) is timed with the online teacher and with the bank,
interleaved (bench/timing.py) so both modes see the same machine load, on the same prefetched batches (data loading
is the same work in both modes and is left out). The bank's read (one gather by (index, view)) is timed on its own
as a fraction of the bank step. Goals: bank step <= 0.65 x online step; bank read < 2% of the step.

A bank removes the teacher's forward pass and nothing else, so the teacher's forward is timed alone in the same
rounds too: the time a bank saves per step should match it (it can exceed it a little: without the teacher the
student's weights and activations stay in cache), and 1 - forward / online step is the ratio the machine allows.
Extra arguments are Hydra overrides of the run, e.g. trainer.amp=off trainer.channels_last=false.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.timing import interleaved, table
from pekd.data.batch import Batch
from pekd.data.order import Plan
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import build_source
from pekd.engine.distributed import DistEnv
from pekd.engine.precision import autocast
from pekd.engine.trainer import Trainer
from pekd.methods import TrainModule, build_method
from pekd.models import build_model, load_weights
from pekd.teacher.bank import BankTeacher
from pekd.teacher.online import OnlineTeacher
from pekd.teacher.precompute import precompute
from pekd.train import compose_config

CLASSES = 10


def write_images(root: Path, per_class: int, side: int, seed: int) -> None:
    """An ImageFolder of smooth random JPEGs (upsampled noise), a little larger than the training crop."""
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            coarse = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((side, side), Image.BILINEAR).save(folder / f"{i:04d}.jpg", quality=90)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Timed calls end when the device is done, not when the kernels are queued."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def trainer_for(cfg: Any, teacher: Any, d_t: int, src: Any, run_dir: Path) -> Trainer:
    """The run's trainer as pekd.train assembles it (same seed, so both modes start from the same student)."""
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.model.name, src.num_classes, src.in_chans)
    method = build_method(cfg.method, student.feature_dim, d_t)
    env = DistEnv(0, 1, 0, DEVICE)
    plan = Plan.make(cfg.data.batch_size, 1)
    return Trainer(cfg, env, run_dir, TrainModule(student, method), teacher, None, None, src.mean, src.std, plan)


def stepper(trainer: Trainer, batches: list[Batch]) -> Callable[[], None]:
    """One optimizer step per call, as Trainer._steps does it (forward, backward, SGD update), cycling batches."""
    it = cycle(batches)

    def step() -> None:
        trainer.train_step([next(it)])
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.optimizer.zero_grad(set_to_none=True)
        sync()

    return step


def reader(bank: BankTeacher, batches: list[Batch]) -> Callable[[], None]:
    """One bank read per call: what teacher.mode=bank costs in place of the teacher's forward."""
    it = cycle(batches)

    def read() -> None:
        batch = next(it)
        bank(batch.images.to(DEVICE), batch)
        sync()

    return read


def forward(teacher: OnlineTeacher, trainer: Trainer, batches: list[Batch]) -> Callable[[], None]:
    """The online teacher's forward alone, on the trainer's prepared input and under the trainer's autocast, as
    the step runs it: all a bank can save. (Timed without the autocast, it was the fp32 forward: on a CPU with
    native bf16 that is 2-3x the forward the step runs, and a bank seemed to save a third of it.)"""
    it = cycle(batches)

    def run() -> None:
        batch = next(it)
        x, _ = trainer.prepare(batch)
        with autocast(DEVICE, trainer.dtype):
            teacher(x, batch)
        sync()

    return run


def device_name() -> str:
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name()
    return f"{torch.get_num_threads()} CPU threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="training crop side (px)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7, help="timed steps per mode (after 2 warm-up steps)")
    ap.add_argument("--views", type=int, default=2, help="bank views K")
    args, overrides = ap.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        side = args.size + args.size // 4
        write_images(tmp / "train", 2 * args.batch // CLASSES + 1, side, seed=0)
        write_images(tmp / "val", 2, side, seed=1)
        torch.manual_seed(0)
        weights = tmp / "resnet34.pt"
        torch.save(build_model("resnet34", CLASSES).state_dict(), weights)
        cfg = compose_config([
            "experiment=imagenet_r34_r18", f"data.root={tmp}", f"data.image_size={args.size}", "data.eval_resize=0",
            f"data.batch_size={args.batch}", f"data.eval_batch_size={args.batch}", "data.workers=0",
            f"bank.views={args.views}", f"teacher.weights={weights}", f"teacher.bank={tmp / 'bank'}",
            "trainer.progress=false", f"run_dir={tmp / 'run'}", *overrides])
        precompute(cfg)
        src = build_source("imagefolder", str(tmp), "train")
        loader = build_train_loader(src, cfg.data, plan=Plan.make(args.batch, 1), rank=0, seed=cfg.seed,
                                    bank_views=args.views)
        batches = list(loader.epoch(0))

        bank = BankTeacher.open(cfg.teacher.bank, cfg, src)
        model = build_model("resnet34", CLASSES)
        load_weights(model, str(weights))
        online = OnlineTeacher(model.to(DEVICE), cfg.trainer.channels_last)
        online_trainer = trainer_for(cfg, online, model.feature_dim, src, tmp / "run")
        steps = {"online teacher": stepper(online_trainer, batches),
                 "feature bank": stepper(trainer_for(cfg, bank, bank.feature_dim, src, tmp / "run"), batches),
                 "teacher forward alone": forward(online, online_trainer, batches)}
        times = interleaved(steps, rounds=args.rounds, reps=1, warmup=2)
        read = interleaved({"read": reader(bank, batches)}, rounds=args.rounds, reps=50)["read"]

    tc, ratio = cfg.trainer, times["feature bank"] / times["online teacher"]
    print(f"\nPEFD resnet34 -> resnet18, {args.size}px, batch {args.batch}, trainer.amp={tc.amp}, channels_last="
          f"{tc.channels_last}, {device_name()}, median of {args.rounds} interleaved steps\n")
    print(table(times, "online teacher", unit_items=args.batch))
    print(f"\nbank read (gather of {args.batch} rows by (index, view)): {1e3 * read:.3f} ms = "
          f"{100 * read / times['feature bank']:.3f}% of the bank step")
    online, fwd = times["online teacher"], times["teacher forward alone"]
    saved = online - times["feature bank"]
    print(f"the bank saves {1e3 * saved:.0f} ms per step; the teacher's forward alone takes {1e3 * fwd:.0f} ms "
          f"({100 * saved / fwd:.0f}% of it saved): here the teacher is {100 * fwd / online:.0f}% of the online "
          f"step, so removing it predicts {1 - fwd / online:.2f}x")
    print(f"goals: bank step <= 0.65x online: {'met' if ratio <= 0.65 else 'NOT met'} ({ratio:.2f}x); "
          f"bank read < 2% of the step: {'met' if read < 0.02 * times['feature bank'] else 'NOT met'}")

if __name__ == "__main__":
    main()
