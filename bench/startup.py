"""`python -m bench.startup [--runs 5]`: seconds from `python -m pekd.train` to its first optimizer step, and why.

Why: every test, sweep point and requeued SLURM job pays the start-up, and on a small run it is most of the
wall time. The run is a small digits one (resnet8, CE, no teacher, one step): the training itself is
negligible, so what is left is interpreter, imports, config composition and set-up.

Measured as whole processes, started round-robin so that machine load shifts hit every command alike
(median, min, max over --runs):

- `python -c pass`, `import torch`, `import torchvision`, `import pekd.train` (torch, OmegaConf, Hydra's
  ConfigStore), the same plus Hydra's compose of the run's config, and the same plus every module `pekd.train.run`
  imports lazily (data, engine, methods, models), each timed to a line it prints when done (so the interpreter's
  shutdown is left out, as it is from the run's first two marks): each row minus the one it builds on is what
  that layer adds;
- the run itself, timed from the parent's Popen to lines on its console: its "run ..." line (config, sources,
  models and run directory ready, logging set up), its first step's log line (trainer.log_every_steps=1: the
  first optimizer step is done), and the process's exit (checkpoint written, interpreter shut down).

Then `python -X importtime` of the same run: the packages with the largest cumulative import times.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = ["data=digits", "model=resnet8", "method=ce", "teacher=none", "trainer.max_steps=1", "trainer.progress=false",
       "trainer.log_every_steps=1", "data.workers=0"]
RUN_IMPORTS = ("pekd.data.order", "pekd.data.pipelines", "pekd.data.sources", "pekd.engine.checkpoint",
               "pekd.engine.determinism", "pekd.engine.distributed", "pekd.engine.logs", "pekd.engine.rundir",
               "pekd.engine.trainer", "pekd.methods", "pekd.models")
COMPOSE = f"from pekd.train import compose_config; compose_config({RUN + ['run_dir=/tmp/unused']!r})"
# row -> (code run as `python -c`, the row it builds on: its "adds" column is the difference of the medians)
SNIPPETS: dict[str, tuple[str, str | None]] = {
    "python -c pass": ("pass", None),
    "import torch": ("import torch", "python -c pass"),
    "import torchvision": ("import torchvision", "import torch"),
    "import pekd.train": ("import pekd.train", "import torch"),  # torchvision comes with the data modules
    "+ Hydra compose of the run's config": (COMPOSE, "import pekd.train"),
    "+ the modules pekd.train.run imports": (COMPOSE + "\nimport " + ", ".join(RUN_IMPORTS),
                                             "+ Hydra compose of the run's config"),
}
# the run's marks, each after the one before
MARKS: dict[str, str] = {
    "run: set-up done ('run ...' line)": "+ the modules pekd.train.run imports",
    "run: first optimizer step (its log line)": "run: set-up done ('run ...' line)",
    "run: process exit": "run: first optimizer step (its log line)",
}
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def environment() -> dict[str, str]:
    """This environment without a surrounding torchrun's or SLURM's variables: the run must be a lone process."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS and not k.startswith("SLURM_")}


def time_snippet(code: str) -> float:
    """Seconds from Popen to the line the snippet prints when it is done: like the run's marks, it leaves out
    the interpreter's shutdown (which, with torch loaded, is not free)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nprint('done', flush=True)"], cwd=REPO,
                            env=environment(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    done = None
    for line in proc.stdout:
        if done is None and line.strip() == "done":
            done = time.perf_counter() - t0
    if proc.wait() != 0 or done is None:
        raise SystemExit(f"`python -c {code!r}` failed")
    return done


def time_run(run_dir: Path) -> tuple[float, float, float]:
    """Seconds from Popen to the run's set-up line, to its first step's log line, and to its exit."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pekd.train", *RUN, f"run_dir={run_dir}"], cwd=REPO,
                            env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    setup = first = None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if setup is None and line.startswith("run "):
            setup = time.perf_counter() - t0
        if first is None and "(global 1)" in line:
            first = time.perf_counter() - t0
    rc = proc.wait()
    end = time.perf_counter() - t0
    if rc != 0 or setup is None or first is None:
        raise SystemExit(f"the digits run failed (exit {rc}):\n{''.join(lines)}")
    return setup, first, end


def import_times(run_dir: Path, top: int) -> list[tuple[str, float, float]]:
    """(package, self s, cumulative s) of every top-level package the run imports (torch, torchvision, sklearn,
    ... at whatever depth it was first imported), largest cumulative first. A package imported by another is
    counted in the other's cumulative time too."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pekd.train", *RUN, f"run_dir={run_dir}"],
                          cwd=REPO, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the digits run failed under -X importtime:\n{proc.stderr}")
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        if "." not in name and not name.strip().startswith("_"):
            rows.append((name.strip(), int(own) / 1e6, int(cumulative) / 1e6))
    return sorted(rows, key=lambda r: -r[2])[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=12, help="rows of the -X importtime table")
    args = ap.parse_args()
    samples: dict[str, list[float]] = {k: [] for k in (*SNIPPETS, *MARKS)}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for name, (code, _) in SNIPPETS.items():
                samples[name].append(time_snippet(code))
            for name, t in zip(MARKS, time_run(Path(tmp) / f"run{i}"), strict=True):
                samples[name].append(t)
        imports = import_times(Path(tmp) / "importtime", args.top)

    load = os.getloadavg()
    print(f"\n`python -m pekd.train {' '.join(RUN)}`: {args.runs} runs of each row, round-robin; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n")
    bases = {**{k: b for k, (_, b) in SNIPPETS.items()}, **MARKS}
    med = {k: statistics.median(v) for k, v in samples.items()}
    print("| what (a whole process each; the run's marks from its start) | median s | min s | max s | adds s |")
    print("|---|---:|---:|---:|---:|")
    for name, values in samples.items():
        base = bases[name]
        adds = f"{med[name] - med[base]:+.2f} (over {base})" if base else ""
        print(f"| {name} | {med[name]:.2f} | {min(values):.2f} | {max(values):.2f} | {adds} |")
    path = ["python -c pass", "import torch", "import pekd.train", "+ Hydra compose of the run's config",
            "+ the modules pekd.train.run imports", *MARKS][:-1]
    parts = [med[path[0]]] + [med[b] - med[a] for a, b in itertools.pairwise(path)]
    labels = ["interpreter", "torch", "pekd.train's own imports", "compose", "run's lazy imports",
              "run set-up", "first step"]
    first = med[path[-1]]
    print(f"\nto the first step, {first:.2f} s = " + " + ".join(
        f"{label} {part:.2f} ({100 * part / first:.0f}%)" for label, part in zip(labels, parts, strict=True)))
    print(f"\n`python -X importtime` of one run: the {args.top} packages with the largest cumulative import time\n")
    print("| module | self s | cumulative s |")
    print("|---|---:|---:|")
    for name, own, cumulative in imports:
        print(f"| {name} | {own:.3f} | {cumulative:.3f} |")


if __name__ == "__main__":
    main()
