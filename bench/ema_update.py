"""`python -m bench.ema_update [--model resnet8x4]`: what building the EMA's tensor lists once saves per step.

StudentEMA.update used to walk the averaged model and the student and split their tensors into floating-point and
other lists on every optimizer step; it now builds them once (pekd.engine.ema.Pairs). The update as it was is that
build followed by the same foreach kernels, so three things are timed interleaved: the update with the lists
rebuilt first (before), the update (now), and the build alone (the host work removed per step). On a GPU the
update's kernels are asynchronous, a few foreach launches, and the host's list work is what the step waits for.
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import interleaved, table
from pekd.engine.ema import Pairs, StudentEMA
from pekd.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet8x4")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    student = build_model(a.model, 100, 3)
    ema = StudentEMA(student, 0.999)

    def rebuilt() -> None:
        ema.pairs = Pairs(ema.model, student)
        ema.update(student)

    before = "lists rebuilt every update (before)"
    times = interleaved({before: rebuilt, "lists built once": lambda: ema.update(student),
                         "the list build alone": lambda: Pairs(ema.model, student)}, rounds=a.rounds, reps=a.reps)
    print(f"\nStudentEMA.update of {a.model} ({len(ema.pairs.mine)} tensors), {torch.get_num_threads()} threads, "
          f"median of {a.rounds} interleaved rounds of {a.reps}\n")
    print(table(times, before).replace("ms / step", "ms / call"))


if __name__ == "__main__":
    main()
