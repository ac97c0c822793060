"""`python -m bench.gpu_check.runs_per_gpu`: the images/s of K runs sharing one GPU, K = 1, 2, 4.

A sweep of the paper's CIFAR-100 table is dozens of small runs; one leaves most of an H100 idle. Here K
independent pekd.train processes (experiment=cifar100_r32x4_r8x4 on synthetic CIFAR-100, device pipeline, eager,
each its own run directory and seed) start together; their aggregate pace is each run's images between its log
lines inside the window in which all K were training (start-up and each run's last steps left out), summed
(bench.gpu_check.run_metrics.together). Goal: 4 runs >= 2.5x the images/s of one. Plain processes, no MPS
(what a node without an MPS daemon gives `launchers/submit.py --runs-per-gpu`).

Without CUDA, K = 1 and 2 rehearse the harness on a few tiny steps.
"""

from __future__ import annotations

from typing import Any

from bench.gpu_check.common import NOT_CHECKED, PASS, error_of, has_cuda, random_teacher, run_step, work_dir
from bench.gpu_check.run_metrics import together
from bench.gpu_check.synthetic import synthetic_cifar100
from tests.train_helpers import start, wait

GOAL = 2.5


def main() -> tuple[str, str, dict[str, Any]]:
    cuda = has_cuda()
    work = work_dir("runs_per_gpu")
    root = synthetic_cifar100(work / "data", **({"train": 50_000, "test": 1_000} if cuda else
                                                {"train": 256, "test": 64}))
    teacher = random_teacher(work, "resnet32x4", 100, 3)
    batch = 64 if cuda else 8
    scale = ["trainer.max_steps=1000", "trainer.log_every_steps=20"] if cuda else \
        ["trainer.max_steps=6", "trainer.log_every_steps=1", "data.batch_size=8", "trainer.threads=1"]
    paces: dict[int, float] = {}
    windows: dict[int, float] = {}
    for k in (1, 2, 4) if cuda else (1, 2):
        dirs = [work / f"k{k}_run{i}" for i in range(k)]
        children = [child for i, d in enumerate(dirs) for child in start(
            ["experiment=cifar100_r32x4_r8x4", f"data.root={root}", f"teacher.weights={teacher}",
             "data.pipeline=device", "trainer.progress=false", f"seed={i}", f"run_dir={d}", "on_existing=overwrite",
             *scale])]
        for (rc, err), d in zip(wait(children, timeout=300), dirs, strict=True):
            assert rc == 0, f"K={k}: {d.name} failed ({rc}): {error_of(err)}"
        paces[k], windows[k] = together(dirs, batch)
    top = max(paces)
    ratio = paces[top] / paces[1]
    figure = (", ".join(f"K={k} {v:,.0f}" for k, v in paces.items()) + f" images/s together; K={top} / K=1 "
              f"{ratio:.2f}x" + (f" (goal >= {GOAL:g}x: {'met' if ratio >= GOAL else 'NOT met'})" if cuda else ""))
    details = {"images_per_s": paces, "window_s": windows}
    if not cuda:
        return NOT_CHECKED, f"no CUDA device; rehearsed on the CPU (6 steps of batch 8): {figure}", details
    return PASS, figure, details


if __name__ == "__main__":
    run_step("runs_per_gpu", main)
