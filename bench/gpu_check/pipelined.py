"""`python -m bench.gpu_check.pipelined`: the paper's CIFAR-100 recipe trained by pekd.train itself, pipelined, on
synthetic CIFAR-100 arrays -- the images/s a user gets, not a fixed batch's latency.

experiment=cifar100_r32x4_r8x4 (resnet32x4 online teacher, resnet8x4 student, batch 64, amp auto), three runs one
after another, each stopped at trainer.max_steps before its epoch ends (no evaluation in the timing): the device
pipeline eager, the device pipeline graphed (trainer.compile=reduce-overhead), the torch pipeline (4 DataLoader
workers) eager. Images/s is the median of the runs' own logged paces, the first log window (start-up,
compilation, graph recording) left out; a 240-epoch CIFAR-100 run is projected from the fastest. The graphed run
must say nothing about falling back, and its loss over the first log window must be the eager run's to 2% (same
seed, same batches; compiled bf16 rounds differently, so not bit for bit). Where Triton cannot build
(bench.gpu_check.preflight.no_triton) the graphed run is left out, NOT CHECKED in the figure.

Without CUDA the same three runs rehearse the harness on a few tiny steps: graphed falls back to eager there, says
so in its one log line (checked), and its losses equal eager's exactly.
"""

from __future__ import annotations

import time
from typing import Any

from bench.gpu_check.common import NOT_CHECKED, PASS, error_of, finished, has_cuda, random_teacher, run_step, work_dir
from bench.gpu_check.preflight import no_triton
from bench.gpu_check.run_metrics import images_per_s, losses
from bench.gpu_check.synthetic import synthetic_cifar100
from tests.train_helpers import train

FALLBACK = "no CUDA graphs, the step runs eager"
RUNS = {"device eager": ["data.pipeline=device", "trainer.compile=false"],
        "device graphed": ["data.pipeline=device", "trainer.compile=reduce-overhead"],
        "torch eager": ["data.pipeline=torch", "trainer.compile=false"]}
CIFAR_TRAIN, EPOCHS = 50_000, 240
GOAL_MIN = 10.0


def main() -> tuple[str, str, dict[str, Any]]:
    cuda = has_cuda()
    work = work_dir("pipelined")
    size = {"train": CIFAR_TRAIN, "test": 10_000} if cuda else {"train": 256, "test": 64}
    root = synthetic_cifar100(work / "data", **size)
    teacher = random_teacher(work, "resnet32x4", 100, 3)
    # GPU: 700 steps of the recipe's batch 64 (one epoch is 781); CPU: a few steps of batch 8, one thread
    scale = ["trainer.max_steps=700", "trainer.log_every_steps=50"] if cuda else \
        ["trainer.max_steps=4", "trainer.log_every_steps=1", "data.batch_size=8", "data.workers=0",
         "trainer.threads=1"]
    paces, loss, seconds = {}, {}, {}
    graphs_off = no_triton() if cuda else None  # a node where Triton cannot build: the eager runs alone
    for name, extra in RUNS.items():
        if graphs_off and name.endswith("graphed"):
            continue
        run_dir = work / name.replace(" ", "_")
        t0 = time.perf_counter()
        [(rc, err)] = train(["experiment=cifar100_r32x4_r8x4", f"data.root={root}", f"teacher.weights={teacher}",
                             "trainer.progress=false", f"run_dir={run_dir}", "on_existing=overwrite", *scale, *extra],
                            timeout=300)
        seconds[name] = round(time.perf_counter() - t0, 1)
        assert rc == 0, f"{name} run failed ({rc}): {error_of(err)}"
        assert finished(run_dir)["status"] == "stopped", f"{name}: {finished(run_dir)['status']}"
        said = err.count(FALLBACK)
        if name.endswith("graphed"):
            assert said == (0 if cuda else 1), f"{name}: the fallback line appears {said} times (CUDA: {cuda})"
        paces[name], loss[name] = images_per_s(run_dir), losses(run_dir)
    fastest = max(paces, key=paces.__getitem__)
    minutes = EPOCHS * CIFAR_TRAIN / paces[fastest] / 60
    figure = (", ".join(f"{k} {v:,.0f}" for k, v in paces.items()) + " images/s; device / torch pipeline "
              f"{paces['device eager'] / paces['torch eager']:.2f}x; 240 CIFAR-100 epochs projected at "
              f"{minutes:,.1f} min ({fastest}"
              + (f"; goal <= {GOAL_MIN:g} min: {'met' if minutes <= GOAL_MIN else 'NOT met'}" if cuda else "") + ")")
    if graphs_off:
        figure += f"; graphed NOT CHECKED ({graphs_off})"
    else:
        first, eager = loss["device graphed"][0], loss["device eager"][0]
        assert abs(first - eager) <= 0.02 * abs(eager), \
            f"graphed vs eager loss over the first log window: {first:.4f} vs {eager:.4f}"
        assert cuda or loss["device graphed"] == loss["device eager"], "the CPU fallback must train exactly as eager"
        figure += (f"; graphed / eager {paces['device graphed'] / paces['device eager']:.2f}x, first-window loss "
                   f"graphed {first:.4f} vs eager {eager:.4f}")
    details = {"images_per_s": paces, "losses": loss, "run_seconds": seconds}
    if not cuda:
        return NOT_CHECKED, f"no CUDA device; rehearsed on the CPU (4 steps of batch 8): {figure}", details
    return PASS, figure, details


if __name__ == "__main__":
    run_step("pipelined_train", main)
