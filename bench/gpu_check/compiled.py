"""`python -m bench.gpu_check.compiled`: a PEFD run with trainer.compile=true on the GPU, bf16, online teacher.

torch.compile of the training module and the online teacher through Inductor and Triton, as pekd.train does it:
PASS when the run reaches trainer.max_steps, its epoch-0 evaluation is finite, and it wrote its checkpoint.
Triton compiles a launcher with the node's C compiler and Python headers the first time: preflight names them,
and without them this step reports NOT CHECKED rather than a failure of pekd. No CPU rehearsal: compiling on the
CPU takes minutes and checks Inductor's C++ backend, not the GPU path.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from bench.gpu_check.common import (
    NOT_CHECKED,
    PASS,
    error_of,
    finished,
    has_cuda,
    overrides,
    random_teacher,
    run_step,
    work_dir,
)
from bench.gpu_check.preflight import no_triton
from tests.train_helpers import train


def main() -> tuple[str, str, dict[str, Any]]:
    if not has_cuda():
        return NOT_CHECKED, "no CUDA device", {}
    if no_triton():
        return NOT_CHECKED, no_triton(), {}
    work = work_dir("compiled")
    teacher = random_teacher(work)
    run_dir = work / "run"
    t0 = time.perf_counter()
    [(rc, err)] = train(overrides("method=pefd", "teacher.name=resnet8", f"teacher.weights={teacher}",
                                  "trainer.amp=bf16", "trainer.compile=true", "data.batch_size=64",
                                  "trainer.max_steps=30", "trainer.epochs=2", "trainer.log_every_steps=10",
                                  f"run_dir={run_dir}", "on_existing=overwrite"), timeout=600)
    seconds = time.perf_counter() - t0
    assert rc == 0, f"compiled run failed ({rc}): {error_of(err)}"
    res = finished(run_dir)
    assert res["status"] == "stopped" and res["global_step"] == 30, (res["status"], res["global_step"])
    assert math.isfinite(res["last_top1"]), "the epoch-0 evaluation is missing"
    assert any((run_dir / "checkpoints").glob("ckpt-*.pt")), "no checkpoint written"
    threads = os.environ.get("TORCHINDUCTOR_COMPILE_THREADS", "default")
    return PASS, (f"PEFD bf16, student + online teacher compiled: 30 steps + eval in {seconds:.0f} s wall "
                  f"(compile included), epoch-0 top-1 {res['last_top1']:.1f}%"), {"seconds": round(seconds, 1),
                                                                                  "compile_threads": threads}


if __name__ == "__main__":
    run_step("compiled_run", main)
