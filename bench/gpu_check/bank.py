"""`python -m bench.gpu_check.bank`: a feature bank precomputed in bf16 on the GPU, then a bf16 run trained from it.

`python -m pekd.precompute` runs the frozen teacher (an online PEFD teacher's recipe, bank.views=2) under bf16
autocast over every (sample, view) and seals the bank; `python -m pekd.train teacher.mode=bank` then trains in
bf16 with the bank's rows travelling in the batch (pinned, copied on the prefetch stream). PASS: both exit 0,
the bank's manifest is sealed with trainer.amp=bf16, and training completes with finite losses. Without CUDA the
same two commands run on the CPU (bf16 autocast) and the step reports NOT CHECKED.
"""

from __future__ import annotations

import json
import math
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
from tests.train_helpers import env_for, spawn, train, wait


def main() -> tuple[str, str, dict[str, Any]]:
    cuda = has_cuda()
    work = work_dir("bank")
    teacher = random_teacher(work)
    bank, run_dir = work / "bank", work / "run"
    common = ["method=pefd", "teacher.name=resnet8", f"teacher.weights={teacher}", f"teacher.bank={bank}",
              "bank.views=2", "trainer.amp=bf16", "data.batch_size=64"]
    t0 = time.perf_counter()
    [(rc, err)] = wait([spawn(["-m", "pekd.precompute", *overrides(*common)], env_for(0, 1, 0))], timeout=600)
    assert rc == 0, f"precompute failed ({rc}): {error_of(err)}"
    precompute_s = time.perf_counter() - t0
    manifest = json.loads((bank / "manifest.json").read_text())
    assert manifest["precision"]["amp"] == "bf16" and manifest["build"].get("sealed"), manifest
    t0 = time.perf_counter()
    [(rc, err)] = train(overrides(*common, "teacher.mode=bank", "trainer.max_steps=30", "trainer.epochs=2",
                                  f"run_dir={run_dir}", "on_existing=overwrite"), timeout=600)
    assert rc == 0, f"bank training failed ({rc}): {error_of(err)}"
    res = finished(run_dir)
    # max_steps ends a run as "stopped"; a non-finite loss would have ended it earlier, as "failed"
    assert res["status"] == "stopped" and res["global_step"] == 30, (res["status"], res["global_step"])
    assert math.isfinite(res["last_top1"]), "the epoch-0 evaluation is missing"
    where = "on the GPU" if cuda else "CPU harness rehearsal"
    rate = manifest["build"].get("images_per_s_rank0")
    figure = (f"{where}: bf16 bank of {manifest['shape']} sealed in {precompute_s:.0f} s ({rate} images/s); "
              f"bank-mode bf16 run: {res['global_step']} steps, epoch-0 top-1 {res['last_top1']:.1f}%")
    return (PASS if cuda else NOT_CHECKED), figure, {"precompute_s": round(precompute_s, 1),
                                                     "train_s": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    run_step("bank_bf16", main)
