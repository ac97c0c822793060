"""`python -m bench.host_overhead [--device cpu|cuda] [--rounds 5 --reps 5] [--modes eager,compiled,graphed]`:
what a training step costs the host -- aten ops dispatched and microseconds per step -- for the official PEFD loop
and pekd eager, compiled (trainer.compile=true) and graphed (trainer.compile=reduce-overhead), side by side.

Why: the paper's CIFAR-100 step (resnet32x4 -> resnet8x4, batch 64, 32x32) is ~0.2 TFLOP in some 470 aten ops;
on an H100 the GPU finishes each op's kernel before Python has launched the next, so the step's pace is the host's
(issue 25). Each op the host dispatches is a launch (or several); compiling fuses them, CUDA graphs replay them in
one launch. This bench counts the dispatches and times the step, so the two can be read together.

- official: the published loop as bench/official_loop.py re-creates it (fp32, NCHW, its per-step bookkeeping
  with its `loss.item()` sync), teacher online.
- pekd eager / compiled / graphed: the real Trainer of experiment=cifar100_r32x4_r8x4 (online teacher,
  trainer.amp=auto, channels_last), `train_step` + `optimizer_step` as Trainer._steps runs them. graphed is
  NOT CHECKED where pekd itself would train without graphs (pekd.engine.compilation.graph_blocker: on a CPU, that
  CUDA graphs need CUDA): the candidate is not run, and the reason is printed.

Every candidate trains on one fixed batch already on the device (bench/official_loop.py's), so loading is left
out. A timed call runs --reps steps queued back to back, then waits for the device once: the pace a training
loop keeps, host and device overlapping (a per-step wait would add the device's time to the host's). Calls are
interleaved (bench/timing.py); compilation and graph recording happen in the untimed warm-up. The counts come
from torch.profiler over --profile-steps more steps: aten ops called from Python or compiled code (an op's own
nested aten calls are not counted again) and, on CUDA, kernel launches, graph launches and the GPU-busy fraction
(the union of the device's kernel and copy intervals over the wall time; measured without CPU-side recording,
whose own cost would lengthen the wall time).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

from bench.official_loop import (
    CLASSES,
    TEACHER,
    OfficialStep,
    fixed_batch,
    machine,
    normalised,
    online_copy,
    pekd_trainer,
    synchronize,
)
from bench.timing import interleaved
from pekd.data.batch import Batch
from pekd.engine.compilation import GRAPHED, graph_blocker
from pekd.engine.precision import amp_dtype
from pekd.engine.trainer import Trainer
from pekd.models import build_model

BASELINE = "official"
MODES = {"eager": "false", "compiled": "true", "graphed": GRAPHED}  # pekd candidate -> trainer.compile


@dataclass(frozen=True)
class Counts:
    """Per step, from the profiler."""

    aten_ops: float
    kernel_launches: float | None  # CUDA only
    graph_launches: float | None
    gpu_busy: float | None  # fraction of the wall time the device had work


def aten_ops(events: list[FunctionEvent]) -> int:
    """aten ops entered from outside any other aten op: what Python (or compiled code) dispatched."""

    def nested(e: FunctionEvent) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    return sum(1 for e in events if e.name.startswith("aten::") and not nested(e))


def busy_fraction(events: list[FunctionEvent], wall_us: float) -> float:
    """The union of the device's activity intervals (kernels, copies, memsets) over `wall_us`."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type.name == "CUDA")
    busy, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy / wall_us


def measure(step: Callable[[], None], steps: int, device: torch.device) -> Counts:
    """Profile `steps` steps: the dispatch counts, then (CUDA) the busy fraction in a pass of its own."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    events = list(prof.events())
    if not cuda:
        return Counts(aten_ops(events) / steps, None, None, None)
    launches = sum(1 for e in events if "LaunchKernel" in e.name)
    graphs = sum(1 for e in events if e.name == "cudaGraphLaunch")
    with profile(activities=[ProfilerActivity.CUDA]) as busy:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    return Counts(aten_ops(events) / steps, launches / steps, graphs / steps,
                  busy_fraction(list(busy.events()), wall_us))


def trainer_step(trainer: Trainer, batch: Batch) -> Callable[[], None]:
    """One optimizer step as Trainer._steps takes it, without waiting for the device (see `queued`)."""
    trainer.module.train()

    def step() -> None:
        trainer.train_step([batch])
        trainer.optimizer_step()

    return step


def queued(step: Callable[[], None], reps: int, device: torch.device) -> Callable[[], None]:
    """`reps` steps back to back, then one wait for the device: one timed call."""

    def run() -> None:
        for _ in range(reps):
            step()
        synchronize(device)

    return run


def cudagraph_skips() -> int:
    """Graphs Inductor ran without a CUDA graph (it logs why under TORCH_LOGS=perf_hints)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after --warmup calls per candidate)")
    ap.add_argument("--reps", type=int, default=5, help="steps per timed call, queued back to back")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation, graph recording)")
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--modes", default="eager,compiled,graphed", help="which pekd candidates, comma-separated")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as the official code and pekd (without trainer.deterministic) set it
    batch = fixed_batch(args.batch, device)
    x = normalised(batch)
    torch.manual_seed(1)
    teacher = build_model(TEACHER, CLASSES).to(device).eval()
    skipped: dict[str, str] = {}
    steps: dict[str, Callable[[], None]] = {BASELINE: OfficialStep(teacher, x, batch.labels, bookkeeping=True,
                                                                   sync=False)}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            blocker = graph_blocker(device, False, 1, "error") if mode == "graphed" else None
            if blocker is not None:
                skipped[f"pekd {mode}"] = blocker
                continue
            trainer = pekd_trainer([f"trainer.compile={MODES[mode]}"], online_copy(teacher), teacher.feature_dim,
                                   device, Path(tmp) / mode)
            steps[f"pekd {mode}"] = trainer_step(trainer, batch)
        times = interleaved({k: queued(s, args.reps, device) for k, s in steps.items()}, rounds=args.rounds, reps=1,
                            warmup=args.warmup)
        counts = {k: measure(s, args.profile_steps, device) for k, s in steps.items()}

    dtype = amp_dtype("auto", device)
    print(f"\nresnet32x4 -> resnet8x4 PEFD (q=3), batch {args.batch}, 32x32, online teacher, fixed batch on the "
          f"device; {machine(device)}; official fp32 NCHW, pekd trainer.amp=auto "
          f"({'fp32' if dtype is None else str(dtype).removeprefix('torch.')}) channels_last; median of "
          f"{args.rounds} rounds of {args.reps} queued steps, counts over {args.profile_steps} profiled steps\n")
    print("| candidate | µs / step | images/s | official / candidate | aten ops / step | kernel launches / step | "
          "graph launches / step | GPU busy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, t in times.items():
        c = counts[name]
        cuda = "" if c.kernel_launches is None else \
            f"{c.kernel_launches:.0f} | {c.graph_launches:.0f} | {100 * (c.gpu_busy or 0):.0f}%"
        print(f"| {name} | {1e6 * t / args.reps:,.0f} | {args.batch * args.reps / t:,.0f} | "
              f"{times[BASELINE] / t:.2f}x | {c.aten_ops:.0f} | {cuda or '– | – | –'} |")
    for name, why in skipped.items():
        print(f"| {name} | NOT CHECKED: {why} | | | | | | |")
    print()
    base = counts[BASELINE]
    for name in (k for k in times if k != BASELINE):
        c = counts[name]
        cuda = "" if c.gpu_busy is None or base.gpu_busy is None else \
            f", GPU busy {100 * c.gpu_busy:.0f}% vs {100 * base.gpu_busy:.0f}%, {c.graph_launches:.0f} graph launches"
        print(f"{name}: pekd / official = {times[BASELINE] / times[name]:.2f}x, {c.aten_ops:.0f} vs "
              f"{base.aten_ops:.0f} aten ops / step{cuda}")
    for name, why in skipped.items():
        print(f"{name}: NOT CHECKED ({why})")
    if "pekd graphed" in times:
        print(f"graphs Inductor ran without CUDA graphs (cudagraph_skips): {cudagraph_skips()}")


if __name__ == "__main__":
    main()
