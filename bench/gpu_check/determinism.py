"""`python -m bench.gpu_check.determinism`: a deterministic run after a non-deterministic one, in ONE process.

cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per process, at its first matmul, so a process that trained without
trainer.deterministic first (a demo worker, a notebook, an in-process sweep) used to fail at the first matmul of
a deterministic run. This process clears the variable, imports pekd (which sets it), trains a PEFD run with
trainer.deterministic=false and amp auto, then the same run twice with trainer.deterministic=true: PASS when both
deterministic runs finish and their weights are bit-equal. On the CPU the same sequence runs and reports NOT
CHECKED (cuBLAS and cuDNN are the point).
"""

from __future__ import annotations

import os

os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)  # pekd's own setting is under test, not the caller's

import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from bench.gpu_check.common import (  # noqa: E402
    NOT_CHECKED,
    PASS,
    finished,
    has_cuda,
    overrides,
    random_teacher,
    run_step,
    work_dir,
)


def train_in_process(args: list[str]) -> None:
    from pekd.train import compose_config, run

    run(compose_config(args))


def main() -> tuple[str, str, dict[str, Any]]:
    import pekd  # noqa: F401  (sets CUBLAS_WORKSPACE_CONFIG before anything runs a matmul)

    cuda = has_cuda()
    steps = 15 if cuda else 5
    work = work_dir("determinism")
    teacher = random_teacher(work)

    def args(run_dir: Path, deterministic: bool) -> list[str]:
        return overrides("method=pefd", "teacher.name=resnet8", f"teacher.weights={teacher}", "trainer.amp=auto",
                         f"trainer.deterministic={str(deterministic).lower()}", "data.batch_size=64",
                         f"trainer.max_steps={steps}", "trainer.log_every_steps=100", f"run_dir={run_dir}",
                         "on_existing=overwrite")

    t0 = time.perf_counter()
    train_in_process(args(work / "fast", False))
    runs = [work / "det1", work / "det2"]
    for run_dir in runs:
        train_in_process(args(run_dir, True))
        assert finished(run_dir)["global_step"] == steps
    from pekd.engine import checkpoint as ckpt

    weights = []
    for run_dir in runs:
        hit = ckpt.newest_valid(run_dir / "checkpoints")
        assert hit is not None, f"no checkpoint in {run_dir}"
        weights.append(hit[1]["model"])
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not differ, f"deterministic runs differ in {len(differ)} tensors, e.g. {differ[:3]}"
    where = "on the GPU" if cuda else "CPU harness rehearsal"
    figure = (f"{where}: non-deterministic run, then 2 deterministic runs in one process "
              f"(CUBLAS_WORKSPACE_CONFIG={os.environ.get('CUBLAS_WORKSPACE_CONFIG')} set by pekd): "
              f"{len(weights[0])} tensors bit-equal ({time.perf_counter() - t0:.0f} s)")
    return (PASS if cuda else NOT_CHECKED), figure, {}


if __name__ == "__main__":
    run_step("determinism", main)
