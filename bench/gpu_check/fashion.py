"""`python -m bench.gpu_check.fashion [DIR]`: one epoch of Fashion-MNIST from a real folder, on the GPU.

The torch pipeline end to end on a real dataset: DataLoader workers, pinned batches, the prefetch stream, amp
auto, evaluation. PASS when one epoch (resnet8, batch 256) reaches a test top-1 above 70% (a working pipeline
and step land near 85%; broken labels, normalisation or augmentation land near 10%). NOT CHECKED when no
folder is given (bench/gpu_check.sh --fashion-mnist DIR); without CUDA a 256-image subset runs on the CPU as a
rehearsal of the harness.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from bench.gpu_check.common import NOT_CHECKED, PASS, error_of, finished, has_cuda, overrides, run_step, work_dir
from bench.gpu_check.preflight import fashion_dir
from tests.train_helpers import train

MIN_TOP1 = 70.0


def main() -> tuple[str, str, dict[str, Any]]:
    folder = fashion_dir()
    if folder is None:
        given = sys.argv[1] if len(sys.argv) > 1 else ""
        return NOT_CHECKED, (f"no Fashion-MNIST files in {given!r}" if given else "no Fashion-MNIST folder given"), {}
    cuda = has_cuda()
    run_dir = work_dir("fashion") / "run"
    size = ["data.workers=4"] if cuda else ["data.subset=256", "data.val_subset=256", "data.workers=1"]
    t0 = time.perf_counter()
    [(rc, err)] = train(overrides("data=fashion_mnist", f"data.root={folder}", "method=ce", "teacher=none",
                                  "trainer.amp=auto", "trainer.epochs=1", "data.batch_size=256", "trainer.lr=0.1",
                                  "trainer.log_every_steps=50", *size, f"run_dir={run_dir}", "on_existing=overwrite"),
                        timeout=600)
    seconds = time.perf_counter() - t0
    assert rc == 0, f"Fashion-MNIST run failed ({rc}): {error_of(err)}"
    res = finished(run_dir)
    top1 = res["last_top1"]
    assert res["status"] == "completed" and math.isfinite(top1), (res["status"], top1)
    n = res["train_set"]["n"]
    if not cuda:
        return NOT_CHECKED, f"CPU harness rehearsal: {n} images, 1 epoch, top-1 {top1:.1f}% ({seconds:.0f} s)", {}
    assert top1 > MIN_TOP1, f"top-1 {top1:.1f}% after one epoch: expected > {MIN_TOP1}%"
    return PASS, f"1 epoch of {n} images, amp auto, 4 workers: top-1 {top1:.1f}% in {seconds:.0f} s wall", {}


if __name__ == "__main__":
    run_step("fashion_mnist", main)
