"""The model-based fault soak: thousands of generated sequences of events over run directories' lives (the machine
of tests/fault_model.py, which the suite runs 200 of), with signals from outside at random moments as well as at
chosen points, each failure shrunk by hypothesis to a minimal sequence; then its figures: sequences run, events,
exit statuses, time, failures found.

    python -m bench.fault_model [--n 2000] [--seed 0] [--chunk 100] [--steps 8] [--folder DIR]     (`make soak`)

The sequences run in chunks of --chunk, chunk i with hypothesis seed --seed + i: a failure ends its chunk (after
shrinking) and is reported with its sequence, and the soak goes on with the next chunk. A chunk is replayed with
the same --seed, --chunk and --steps (signals from outside land where the moment takes them: the step lists of
their failures say what was sent when, not where it landed). Exit status 1 when any chunk failed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import seed as with_seed
from hypothesis.stateful import run_state_machine_as_test

from tests.fault_model import Env, machine, open_env


def soak(env: Env, n: int, seed: int, chunk: int, steps: int) -> list[str]:
    """Run `n` sequences in chunks; returns each failed chunk's report."""
    failures = []
    model = machine(env)
    for i in range(max(1, n // chunk)):
        t0 = time.monotonic()
        before, found = env.figures["sequences"], len(env.found)
        try:
            run_state_machine_as_test(with_seed(seed + i)(lambda: model()), settings=settings(
                max_examples=chunk, stateful_step_count=steps, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck)))
            verdict = "ok"
        except Exception as e:  # noqa: BLE001 -- a failed chunk is a finding to report, and the soak goes on
            report = "\n".join(describe(x) for x in getattr(e, "exceptions", [e]))  # hypothesis: one per failure
            failures.append(f"chunk {i} (seed {seed + i}):\n{report}{first_found(env.found[found:])}")
            verdict = "FAILED"
            print(failures[-1], flush=True)
        print(f"chunk {i} (seed {seed + i}): {verdict}, {env.figures['sequences'] - before} sequences "
              f"in {time.monotonic() - t0:.0f} s", flush=True)
    return failures


def describe(e: BaseException) -> str:
    """One failure as the fault model reports it: what broke, then the sequence that led to it (its notes); a group
    (hypothesis's FlakyFailure: failed once, then not on replay) with each failure inside it."""
    inner = "".join("\n  " + describe(x).replace("\n", "\n  ") for x in getattr(e, "exceptions", []))
    return "".join(traceback.format_exception_only(e)) + "\n".join(getattr(e, "__notes__", [])) + inner


def first_found(found: list[str]) -> str:
    """The chunk's first violation as it happened (before shrinking, which a Flaky replay can cut short), and how
    many it had in all: a Flaky error alone no longer says what failed."""
    if not found:
        return "\nno invariant failed in this chunk: the error is the harness's or hypothesis's own"
    return f"\nfirst violation of the chunk, as it happened ({len(found)} in all, shrinking's included):\n{found[0]}"


def summary(figures: Counter[str], starts: int, seconds: float, failures: list[str]) -> str:
    events = {k: v for k, v in sorted(figures.items()) if k != "sequences" and not k.startswith(("rc ", "fault "))}
    exits = {k[3:]: v for k, v in sorted(figures.items()) if k.startswith("rc ")}
    faults = {k[6:]: v for k, v in sorted(figures.items()) if k.startswith("fault ")}
    return (f"sequences run: {figures['sequences']} (shrinking's replays included), {starts} process starts\n"
            f"events: {events}\nfaults: {faults}\nexit statuses: {exits}\n"
            f"time: {seconds:.0f} s\nfailures found: {len(failures)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="sequences (shrinking's replays come on top)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed of the first chunk")
    ap.add_argument("--chunk", type=int, default=100, help="sequences per chunk: a failure ends its chunk")
    ap.add_argument("--steps", type=int, default=8, help="events per sequence at most, after its first start")
    ap.add_argument("--folder", type=Path, help="where the runs go (default: a temporary folder)")
    args = ap.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="pekd-fault-model-"))
    t0 = time.monotonic()
    env = open_env(folder)
    env.outside_signals = True
    try:
        failures = soak(env, args.n, args.seed, args.chunk, args.steps)
    finally:
        env.server.close()
    print(summary(env.figures, env.server.starts, time.monotonic() - t0, failures))
    for f in failures:
        print(f"\n{f}")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
