"""`pekd status FOLDER [--watch [SECONDS]] [--failed]` (or `python -m pekd status`): where every run of a run
directory, a sweep or a study stands, one row per run -- state (done, running, queued, requeued N times, stopped,
failed with its error line, not started), step of total, last and best top-1, images/s, ETA, its SLURM job and
who holds its lease -- read from the run directories and launch records, and from squeue/sacct when a SLURM
controller answers.

Exit status: 0 when every run is done, 1 when any is not (running, queued, requeued, stopped, failed or not
started), 2 for bad input (not a folder, no runs in it, an unreadable launch record).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from pekd.cluster.queue import Job, ended_jobs, queued_jobs
from pekd.cluster.resubmit import resubmit_commands
from pekd.cluster.run_files import RunFiles, read_run_files
from pekd.cluster.run_state import STATES, RunState, run_state
from pekd.cluster.sweep import Launch, launches, run_dirs_on_disk
from pekd.engine.progress import duration_text
from pekd.errors import PekdError

FILES_ONLY = "states from the run directories and launch records only"
HEADER = ("run", "state", "step", "last", "best", "img/s", "ETA", "job", "lease")


def _slurm_jobs(files: dict[Path, RunFiles], launched: dict[Path, Launch]) -> tuple[dict[str, Job], list[str]]:
    """SLURM's word on the newest job of every unfinished run with a launch record (runs submitted with --local
    have no SLURM job), and the notes to print when it could not be had."""
    ask = {d: launch.job_id for d, launch in launched.items()
           if "--local" not in launch.command and files[d].status != "completed"}
    if not ask:
        return {}, []
    live, why = queued_jobs(sorted({job.split("_")[0] for job in ask.values()}))
    if live is None:
        return {}, [f"note: no SLURM controller answers ({why}): {FILES_ONLY}"]
    ended = [job for job in ask.values() if job not in live]
    if not ended:
        return live, []
    accounted, why = ended_jobs(sorted(set(ended)))
    return live | accounted, [f"note: {why}: how ended jobs ended is read from the run directories"] if why else []


def collect(root: Path) -> tuple[list[RunState], dict[Path, Launch], list[str]]:
    """Every run at or under root, judged; the launch records that name them; notes on what could not be asked."""
    if not root.is_dir():
        raise PekdError(f"{str(root)!r} is not a folder; give a run directory, a sweep folder or a study's folder")
    launched = launches(root)
    dirs = sorted(run_dirs_on_disk(root) | set(launched))
    if not dirs:
        raise PekdError(f"no pekd runs under {str(root)!r} (no config.yaml or results.json, and no launch record "
                        "names a run there); give the --folder of a submission, a sweep folder or a run directory")
    files = {d: read_run_files(d) for d in dirs}
    jobs, notes = _slurm_jobs(files, launched)
    now = time.time()
    states = []
    for d in dirs:
        launch = launched.get(d)
        states.append(run_state(files[d], launch, jobs.get(launch.job_id) if launch else None, now))
    return states, launched, notes


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(root: Path, states: list[RunState]) -> str:
    """The rows, aligned, each failed or stopped run followed by its error line or reason; then the counts."""
    rows = []
    for s in states:
        name = str(s.run_dir.relative_to(root)) if s.run_dir != root else s.run_dir.name
        step = "-" if s.step is None else f"{s.step}/{s.total if s.total else '?'}"
        rows.append((name, s.label, step, _number(s.last_top1, ".2f"), _number(s.best_top1, ".2f"),
                     _number(s.images_per_s, ".0f"), "-" if s.eta_s is None else duration_text(s.eta_s), s.job or "-",
                     s.lease or "-"))
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(HEADER, widths, strict=True)).rstrip()]
    for s, row in zip(states, rows, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if s.detail:
            lines.append(f"    {'error: ' if s.state == 'failed' else ''}{s.detail}")
    counts = Counter(s.state for s in states)
    summary = ", ".join(f"{counts[k]} {k}" for k in STATES if counts[k])
    lines.append(f"{len(states)} run{'s' if len(states) != 1 else ''}: {summary}")
    return "\n".join(lines)


def exit_status(states: list[RunState]) -> int:
    return 0 if all(s.state == "done" for s in states) else 1


def show(root: Path) -> int:
    states, _, notes = collect(root)
    for note in notes:
        print(note, file=sys.stderr)
    print(table(root, states), flush=True)
    return exit_status(states)


def watch(root: Path, every: float) -> int:
    """Refresh every `every` seconds until every run is done (exit 0) or Ctrl-C (the status of the last look)."""
    status = 1
    try:
        while True:
            if sys.stdout.isatty():
                print("\033[H\033[2J", end="")
            print(f"pekd status {root}  {time.strftime('%H:%M:%S')}, every {every:g} s (Ctrl-C stops)")
            status = show(root)
            if status == 0:
                return 0
            time.sleep(every)
    except KeyboardInterrupt:
        return status


def print_failed(root: Path) -> int:
    """The commands that resubmit exactly the failed runs, alone on stdout (for a script or `sh`)."""
    states, launched, notes = collect(root)
    for note in notes:
        print(note, file=sys.stderr)
    failed = [s.run_dir for s in states if s.state == "failed"]
    if not failed:
        print(f"no failed runs under {root}", file=sys.stderr)
    for command in resubmit_commands(failed, launched):
        print(command)
    return exit_status(states)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="pekd status", description=" ".join(__doc__.split("\n\n")[0].split()),
                                 epilog="exit status: 0 every run is done; 1 some run is not done (or failed); "
                                 "2 bad input")
    ap.add_argument("folder", type=Path, help="a run directory, a sweep folder, a submission's --folder or a study")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
                      help="refresh every SECONDS (default 10) until every run is done")
    mode.add_argument("--failed", action="store_true",
                      help="print only the command(s) that resubmit exactly the failed runs")
    args = ap.parse_args(argv)
    if args.watch is not None and not args.watch > 0:
        ap.error("--watch SECONDS must be more than 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.folder.resolve()
    try:
        if args.failed:
            return print_failed(root)
        return watch(root, args.watch) if args.watch is not None else show(root)
    except PekdError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
