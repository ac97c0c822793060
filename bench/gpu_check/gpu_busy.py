"""`python -m bench.gpu_check.gpu_busy`: how much of the time the GPU has work while pekd trains, from torch.profiler.

The paper's CIFAR-100 recipe (experiment=cifar100_r32x4_r8x4, synthetic CIFAR-100, device pipeline, amp auto) in
this process: Trainer._steps itself -- the loop pekd.train runs, fed by the device pipeline through the
trainer's prefetch -- eager and graphed (trainer.compile=reduce-overhead), each warmed up (compilation, graph
recording), then profiled over 100 steps with device activity only. The busy fraction is the union of the
device's kernel and copy intervals over the wall time (bench.host_overhead.busy_fraction): well below 1, the GPU
waits for the host. Checkpoints are left out (the loop is stopped by trainer.max_steps, as bench.trainer_overhead
does).

Without CUDA the same loop runs a few tiny steps under the CPU profiler: a rehearsal of the harness, NOT CHECKED.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from bench.gpu_check.common import NOT_CHECKED, PASS, has_cuda, run_step, work_dir
from bench.gpu_check.preflight import no_triton
from bench.gpu_check.synthetic import synthetic_cifar100
from bench.host_overhead import busy_fraction
from bench.official_loop import synchronize
from pekd.data.order import Plan
from pekd.data.pipelines import build_train_loader
from pekd.data.sources import build_source
from pekd.engine.distributed import DistEnv
from pekd.engine.metrics import Metrics
from pekd.engine.preemption import StopSignal
from pekd.engine.prefetch import prefetch
from pekd.engine.trainer import Trainer
from pekd.methods import TrainModule, build_method
from pekd.models import build_model
from pekd.teacher.online import OnlineTeacher
from pekd.train import compose_config


def trainer_for(compile_setting: str, root: Path, device: torch.device, run_dir: Path, cuda: bool) -> Trainer:
    """The recipe's Trainer as pekd.train builds it, with the device pipeline over `root` and a random teacher."""
    small = [] if cuda else ["data.batch_size=8", "trainer.threads=1"]
    cfg = compose_config(["experiment=cifar100_r32x4_r8x4", f"data.root={root}", "data.pipeline=device",
                          f"trainer.compile={compile_setting}", "trainer.progress=false", "trainer.log_every_steps=50",
                          f"run_dir={run_dir}", *small])
    run_dir.mkdir(parents=True, exist_ok=True)  # its metrics go there, as in a run directory
    src = build_source(cfg.data.source, cfg.data.root, "train")
    torch.manual_seed(1)
    teacher = OnlineTeacher(build_model(cfg.teacher.name, src.num_classes).to(device), channels_last=True)
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.model.name, src.num_classes)
    plan = Plan.make(cfg.data.batch_size, 1)
    loader = build_train_loader(src, cfg.data, plan=plan, rank=0, seed=cfg.seed)
    module = TrainModule(student, build_method(cfg.method, student.feature_dim, teacher.model.feature_dim))
    return Trainer(cfg, DistEnv(0, 1, 0, device), run_dir, module, teacher, loader, None, src.mean, src.std, plan)


def busy(trainer: Trainer, warmup: int, steps: int, stop: StopSignal, cuda: bool) -> tuple[float, float]:
    """(busy fraction, images/s) of `steps` steps of the trainer's own loop after `warmup` unprofiled ones."""
    trainer.save_checkpoint = lambda: None  # type: ignore[method-assign]  # reaching max_steps checkpoints
    trainer.metrics = Metrics(trainer.run_dir, True, 0)  # as fit() makes it
    trainer.module.train()
    batches = prefetch(iter(trainer.train_loader.epoch(0)), trainer.device)

    def run(n: int) -> None:
        trainer.tc.max_steps = trainer.progress.global_step + n
        assert trainer._steps(stop, trainer.steps_per_epoch, batches, None, None) == "stopped"

    run(warmup)
    synchronize(trainer.device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run(steps)
        synchronize(trainer.device)
        wall = time.perf_counter() - t0
    trainer.metrics.close()
    return busy_fraction(list(prof.events()), wall * 1e6), steps * trainer.plan.global_batch / wall


def main() -> tuple[str, str, dict[str, Any]]:
    cuda = has_cuda()
    device = torch.device("cuda" if cuda else "cpu")
    work = work_dir("gpu_busy")
    root = synthetic_cifar100(work / "data", **({"train": 50_000, "test": 100} if cuda else {"train": 64, "test": 8}))
    found: dict[str, tuple[float, float]] = {}
    with StopSignal() as stop:
        graphed = cuda and not no_triton()  # a node where Triton cannot build: eager alone
        for name, setting in (("eager", "false"), ("graphed", "reduce-overhead"))[:2 if graphed else 1]:
            trainer = trainer_for(setting, root, device, work / name, cuda)
            found[name] = busy(trainer, 30 if cuda else 1, 100 if cuda else 2, stop, cuda)
    figure = "; ".join(f"{k}: GPU busy {100 * b:.0f}% of the wall time at {ips:,.0f} images/s"
                       for k, (b, ips) in found.items())
    details = {k: {"busy": b, "images_per_s": ips} for k, (b, ips) in found.items()}
    if not cuda:
        return NOT_CHECKED, "no CUDA device; the profiled loop rehearsed on the CPU (2 steps of batch 8)", details
    return PASS, figure + " (device pipeline, 100 profiled steps each)", details


if __name__ == "__main__":
    run_step("gpu_busy", main)
