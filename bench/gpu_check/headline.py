"""`python -m bench.gpu_check.headline`: the check's first speed step -- pekd vs the official PEFD loop on the
paper's CIFAR-100 pair, eager, compiled and graphed, with what each costs the host.

Runs bench.host_overhead (resnet32x4 -> resnet8x4, batch 64, 32x32, fixed batch on the device, candidates
interleaved in one process) and records each pekd candidate's speed-up over the official loop, its aten ops per
step, the GPU-busy fraction and whether the graphed step really replayed CUDA graphs (on a node where Triton
cannot build, eager alone: bench.gpu_check.preflight.no_triton). Goal (issue 25): pekd
online >= 3x the official loop's images/s. PASS means the bench ran and gave its figures; a missed goal is in the
figure, a finding for docs/benchmarks.md.

Without CUDA it rehearses the same bench and parser on the CPU at batch 4, official vs pekd eager (graphed is
NOT CHECKED there by the bench itself; compiling on this CPU would take minutes): NOT CHECKED.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from bench.gpu_check.common import NOT_CHECKED, PASS, has_cuda, run_step
from bench.gpu_check.preflight import no_triton

GOAL = 3.0
GPU = ["--device", "cuda", "--rounds", "5", "--reps", "10", "--warmup", "3", "--profile-steps", "5"]
CPU = ["--device", "cpu", "--batch", "4", "--modes", "eager,graphed", "--rounds", "1", "--reps", "1", "--warmup", "1",
       "--profile-steps", "1", "--threads", "1"]
RATIO = re.compile(r"^pekd (\w+): pekd / official = ([\d.]+)x, (\d+) vs (\d+) aten ops / step(.*)$", re.M)
SKIPPED = re.compile(r"^pekd (\w+): NOT CHECKED \((.*)\)$", re.M)


def figure(output: str, cuda: bool) -> tuple[str, dict[str, Any]]:
    """The row's figure and details from bench.host_overhead's closing lines."""
    ratios = {m[1]: (float(m[2]), int(m[3]), int(m[4]), m[5].lstrip(", ")) for m in RATIO.finditer(output)}
    skipped = dict(SKIPPED.findall(output))
    if "eager" not in ratios:
        raise RuntimeError("bench.host_overhead printed no 'pekd eager: pekd / official' line")
    parts = [f"{k} {r:.2f}x ({ops} vs {base} aten ops/step{', ' + more if more else ''})"
             for k, (r, ops, base, more) in ratios.items()]
    parts += [f"{k} NOT CHECKED ({why})" for k, why in skipped.items()]
    best = max(ratios, key=lambda k: ratios[k][0])
    goal = f"; goal >= {GOAL:g}x: {'met' if ratios[best][0] >= GOAL else 'NOT met'} (best: {best})" if cuda else ""
    return "pekd / official loop: " + "; ".join(parts) + goal, {"ratios": ratios, "skipped": skipped}


def main() -> tuple[str, str, dict[str, Any]]:
    cuda = has_cuda()
    command = ["bench.host_overhead", *(GPU if cuda else CPU)]
    if cuda and no_triton():  # eager and the official loop still give the headline's first figure
        command += ["--modes", "eager"]
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    print(done.stdout, done.stderr[-5000:], sep="\n", flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(command)} exited {done.returncode}: {done.stderr[-300:]}")
    text, details = figure(done.stdout, cuda)
    if cuda and no_triton():
        text += f"; compiled and graphed NOT CHECKED ({no_triton()})"
    details["command"] = ["python", "-m", *command]
    if not cuda:
        return NOT_CHECKED, f"no CUDA device; rehearsed on the CPU at batch 4: {text}", details
    return PASS, text, details


if __name__ == "__main__":
    run_step("headline", main)
