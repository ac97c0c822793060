"""`python -m bench.gpu_check.speed NAME`: one of the existing benches with few rounds, its figure picked out.

The benches themselves (bench/*.py) do the measuring and print their tables; this runs one as a child process,
keeps its whole output in the log, and records the line that carries the figure. PASS means it ran on the GPU
and produced its figure; whether a speed goal was met is part of the figure (a missed goal is a finding for the
benchmark docs, not a broken check). Without CUDA: NOT CHECKED, nothing is run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from bench.gpu_check.common import NOT_CHECKED, PASS, has_cuda, run_step

# name -> (bench command, regex over its output whose groups make the figure, figure template)
BENCHES: dict[str, tuple[list[str], str, str]] = {
    "resnet18_eager": (["bench.gpu_throughput", "--model", "resnet18", "--amp", "bf16", "--batch", "256",
                        "--steps", "30"],
                       r"([\d,]+) images/s", "{0} images/s (resnet18 224px bf16 channels_last, batch 256, eager)"),
    "resnet18_compiled": (["bench.gpu_throughput", "--model", "resnet18", "--amp", "bf16", "--batch", "256",
                           "--steps", "30", "--compile"],
                          r"([\d,]+) images/s",
                          "{0} images/s (resnet18 224px bf16 channels_last, batch 256, compiled)"),
    "official_loop": (["bench.official_loop", "--device", "cuda", "--rounds", "3", "--reps", "5"],
                      r"pekd online eager: pekd / official = ([\d.]+)x.*?goal >= 3x: (met|NOT met)[\s\S]*"
                      r"pekd bank: pekd / official = ([\d.]+)x[\s\S]*pekd online compiled: pekd / official = ([\d.]+)x",
                      "pekd / official loop: online eager {0}x (goal >= 3x {1}), bank {2}x, online compiled {3}x"),
    "trainer_overhead": (["bench.trainer_overhead", "--device", "cuda", "--rounds", "3", "--reps", "2"],
                         r"pekd trainer / bare loop = ([\d.]+) \(trainer overhead ([+-][\d.]+)%; goal <= (\d+)%: "
                         r"(met|NOT met)",
                         "trainer / bare loop {0} ({1}% overhead; goal <= {2}%: {3})"),
    "bank_vs_online": (["bench.teacher_modes", "--size", "224", "--batch", "64", "--rounds", "5"],
                       r"bank step <= 0.65x online: (met|NOT met) \(([\d.]+)x\); bank read < 2% of the step: "
                       r"(met|NOT met)",
                       "bank step / online step {1}x at 224px (goal <= 0.65x: {0}; bank read < 2%: {2})"),
}


def main() -> tuple[str, str, dict[str, Any]]:
    name = sys.argv[1]
    command, pattern, template = BENCHES[name]
    if not has_cuda():
        return NOT_CHECKED, "no CUDA device", {}
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
    print(done.stdout, done.stderr[-5000:], sep="\n", flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(command)} exited {done.returncode}: {done.stderr[-300:]}")
    hit = re.search(pattern, done.stdout)
    if hit is None:
        raise RuntimeError(f"python -m {' '.join(command)} printed no figure matching {pattern!r}")
    return PASS, template.format(*hit.groups()), {"command": ["python", "-m", *command]}


if __name__ == "__main__":
    run_step(sys.argv[1], main)
