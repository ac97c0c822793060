"""`python -m bench.gpu_check.speed NAME`: one of the existing benches with few rounds, its figure picked out
(the speed phase's last rows; its headline is bench.gpu_check.headline).

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
