"""The chaos soak: one run through N >= 50 interruptions at random steps (a random mix of SIGUSR2, SIGTERM, SIGKILL
and SIGKILL inside a checkpoint write), restarted with the same command each time, then checked like
tests/test_chaos.py (bit-exact final weights, no completed checkpoint lost, nothing corrupt resumed, every sample
once per epoch) and its figures printed: interruptions survived, steps recomputed, time lost.

    python -m bench.soak [--n 50] [--epochs 10] [--seed 0] [--folder DIR]      (`make soak`)

Most of the time lost is process start-up (importing torch), which a real job pays once per requeue too.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from tests import chaos as c
from tests.test_faults import temp_files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50, help="interruptions")
    ap.add_argument("--epochs", type=int, default=10, help="440 steps for 50 interruptions: each costs a few steps "
                    "(a trainer runs on a little past its target before the signal lands), so 50 in 132 steps drift "
                    "to the run's end")
    ap.add_argument("--seed", type=int, default=0, help="picks the kinds and the steps")
    ap.add_argument("--folder", type=Path, help="where the two runs go (default: a temporary folder)")
    args = ap.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="pekd-soak-"))
    rng = random.Random(args.seed)
    kinds = [rng.choice(c.KINDS) for _ in range(args.n)]
    figures = c.Figures()
    print(f"soak: {args.n} interruptions over {args.epochs} epochs ({args.epochs * c.STEPS_PER_EPOCH} steps) in "
          f"{folder}", flush=True)
    c.reference_run(folder / "reference", args.epochs, figures)
    c.chaos(folder / "chaos", args.epochs, kinds, rng, figures)
    c.assert_same_weights(c.final_weights(folder / "chaos"), c.final_weights(folder / "reference"))
    c.check_audit(folder / "chaos", folder / "reference")
    c.newest_verified_step(folder / "chaos")
    assert not temp_files(folder / "chaos"), temp_files(folder / "chaos")
    print(figures.summary())
    print("final weights equal the uninterrupted run's bit for bit; no completed checkpoint lost; every checkpoint "
          "verifies; every sample once per epoch, replayed steps identical")


if __name__ == "__main__":
    main()
