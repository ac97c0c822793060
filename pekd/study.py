"""`python -m pekd.study`: where the paper's claims hold, as curves along the training budget on Fashion-MNIST.

The demo answers the claims at one tiny budget (500 images x 24 epochs, 168 optimizer steps). This study asks the
question its result raises: along the training budget, where does a projector start to help, if ever, and what do
the train/test gap, CKA, calibration, dead projector units and alignment do on the way? It trains

1. a teacher to convergence on all 60,000 training images (resnet20, the recipe below, its accuracy stated);
2. one feature bank per budget (K=2: the flip-only augmentation has exactly two views, so a bank run equals an
   online run), so FD/PEFD students read the teacher's features instead of running it;
3. resnet8 students (64-d features, like the teacher's: FD without a projector is possible) with CE, FD without a
   projector, PEFD q=1 and PEFD q=3 (optionally Hinton KD and KD with the official code's logit projector) at
   each budget, several paired training seeds, every run evaluated once at its end on all 10,000 test images;
4. every student's mechanism diagnostics from its final evaluation's pass, then `pekd.report --along
   data.subset`: each claim's paired difference with its CI at every budget, Holm across everything shown.

A budget is a training subset drawn from the full training set (one data split, so every seed and method of a budget
sees the same images) trained for the same number of epochs: data.subset=500 at 24 epochs is the demo's point, 168
steps. Several epochs at one subset separate steps from data, and a second teacher (another training seed) or data
split shows what one teacher's and one split's intervals leave out: every combination is a cell
(pekd.science.study_plan), its runs in a folder that names it. Every run is an ordinary pekd run directory named by
what it is, so rerunning the same command skips finished runs and resumes unfinished ones; with `--launcher slurm`
each phase is submitted through `launchers/submit.py` and the command is simply rerun when a phase's jobs have
finished.

All runs are fp32 (`trainer.amp=off`): the study spans machines whose CPUs differ in native bf16, and one
precision keeps every point comparable. The sizes come from a pilot on another data split and other seeds
(docs/study.md), chosen for time alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pekd.engine.status import completed
from pekd.errors import PekdError, user_errors_exit
from pekd.science.one_driver import one_driver
from pekd.science.side_by_side import SideBySide, Tally
from pekd.science.study_plan import (
    METHODS,
    TEACHER,
    VIEWS,
    Cell,
    bank_folder,
    cells,
    plan,
    report_options,
    student_overrides,
    teacher_export,
    teacher_overrides,
)


def _ints(ap: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        ap.error(f"{option} {text!r}: give a comma list of whole numbers")
    if len(set(values)) < len(values) or min(values) < 0:
        ap.error(f"{option} {text!r}: the values must be distinct and not negative")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Rerun the same command to resume; finished runs are skipped.")
    ap.add_argument("--out", type=Path, default=Path("runs/study"), help="folder for every run of the study")
    ap.add_argument("--subsets", default="500,2000,7000,27000",
                    help="training budgets: images drawn from the 60,000 (comma list), each for --epochs")
    ap.add_argument("--epochs", default="24", help="epochs per student run at every budget (comma list: each "
                    "budget at each, so steps vary with the data fixed)")
    ap.add_argument("--methods", default="ce,fd,pefd_q1,pefd_q3", help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--seeds", type=int, default=5, help="paired training seeds per method and budget")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--split-seed", "--split-seeds", dest="split_seed", default="0",
                    help="which subsets the budgets take (comma list: each split at every budget; the pilot used 1)")
    ap.add_argument("--teacher-seed", "--teacher-seeds", dest="teacher_seed", default="0",
                    help="training seed of the teacher (comma list: a teacher per seed, same recipe, every student "
                    "cell under each)")
    ap.add_argument("--teacher", type=Path, help="use this teacher export instead of training one (student.pt)")
    ap.add_argument("--teacher-epochs", type=int, default=20,
                    help="epochs of the teacher the study trains (lr x0.1 at 60%% and 85%% of them)")
    ap.add_argument("--test", choices=("t", "perm"), default="t",
                    help="the report's test, fixed before any result: t (paired t-test; 5 seeds) or perm (exact "
                    "sign-flip; 9 seeds reach p = 2/512)")
    ap.add_argument("--val-subset", type=int, default=0, help="test images (0: all 10,000)")
    ap.add_argument("--data", choices=sorted(VIEWS), default="fashion_mnist",
                    help="digits: a toy-sized study for tests (sklearn's 1,797 8x8 images)")
    ap.add_argument("--data-root", help="Fashion-MNIST folder (default: the data config's root)")
    ap.add_argument("--launcher", choices=("local", "slurm"), default="local")
    ap.add_argument("--processes", type=int, default=2, help="local: runs trained side by side, one thread each")
    ap.add_argument("--submit-args", default="", help="slurm: options for launchers/submit.py, e.g. "
                    "'--partition gpu --time 120'")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (runs, steps) and exit")
    ap.add_argument("--export", type=Path, metavar="DIR",
                    help="copy what the report reads of every completed run to DIR/runs, report there, and exit")
    args = ap.parse_args(argv)
    args.subsets = _ints(ap, "--subsets", args.subsets)
    args.epochs = _ints(ap, "--epochs", args.epochs)
    args.split_seed = _ints(ap, "--split-seed", args.split_seed)
    args.teacher_seed = _ints(ap, "--teacher-seed", args.teacher_seed)
    args.methods = args.methods.split(",")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.teacher_epochs < 1:
        ap.error("--teacher-epochs must be at least 1")
    if args.seeds < 2:
        ap.error("--seeds must be at least 2: a paired comparison needs several seeds")
    if 0 in args.subsets or 0 in args.epochs:
        ap.error("--subsets and --epochs must be positive")
    if args.teacher and args.teacher_seed != [0]:
        ap.error("--teacher names one teacher; --teacher-seed trains teachers: give one or the other")
    return args


def run_dir_of(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("run_dir=")).split("=", 1)[1])


def train(overrides: list[str]) -> dict[str, Any]:
    from pekd.train import run_to_completion

    return run_to_completion(overrides, "the study (`python -m pekd.study` with the same options)")


def train_and_analyze(overrides: list[str]) -> dict[str, Any]:
    """Train (trainer.analyze=true writes analysis.json from the final evaluation's own pass); a second pass only
    for a run finished without one."""
    from pekd.analyze import main as analyze

    run_dir = run_dir_of(overrides)
    r = train(overrides) if not completed(run_dir) else {"run_dir": str(run_dir), "seconds": 0.0,
                                                         "last_top1": None}
    if not (run_dir / "analysis.json").exists():
        analyze([str(run_dir), "--quiet"])
    return r


def submit(args: argparse.Namespace, runs: list[list[str]]) -> None:
    """Each run through launchers/submit.py (its own checks, run directory and requeue), one job per run."""
    script = Path(__file__).resolve().parent.parent / "launchers" / "submit.py"
    for overrides in runs:
        cmd = [sys.executable, str(script), *args.submit_args.split(), "--gpus", "0", *overrides]
        if subprocess.run(cmd).returncode != 0:
            raise PekdError(f"submission failed: {' '.join(cmd)}; fix the error above and rerun the study")


def print_plan(args: argparse.Namespace, runs: list[tuple[Cell, list[str]]]) -> None:
    per = {c: c.steps() for c in cells(args)}
    total = sum(c.steps() for c, _ in runs)
    done = sum(completed(run_dir_of(r)) for _, r in runs)
    print(f"study {args.out}: {len(runs)} student runs ({len(args.methods)} methods x {args.seeds} seeds x "
          f"{len(per)} cells; {done} completed), {total:,} optimizer steps in all; steps per cell: "
          + ", ".join(f"{c.folder()} -> {s}" for c, s in per.items()), flush=True)


def phase_teacher(args: argparse.Namespace) -> bool:
    """True when every teacher export exists; otherwise trains them (local) or submits them (slurm)."""
    missing = [t for t in args.teacher_seed if not teacher_export(args, t).exists()]
    for t in missing:
        print(f"== teacher {TEACHER} (seed {t}) on every {args.data} training image, {args.teacher_epochs} epochs",
              flush=True)
        if args.launcher == "slurm":
            submit(args, [teacher_overrides(args, t)])
            continue
        r = train(teacher_overrides(args, t))
        print(f"   top-1 {r['last_top1']:.2f}% ({r['seconds']:.0f} s)", flush=True)
    return args.launcher == "local" or not missing


def phase_banks(args: argparse.Namespace) -> None:
    from pekd.teacher.precompute import precompute
    from pekd.train import compose_config

    for cell in {bank_folder(args, c): c for c in cells(args)}.values():
        manifest = precompute(compose_config(student_overrides(args, "fd", cell, args.first_seed)))
        print(f"== feature bank {bank_folder(args, cell)}: K={VIEWS[args.data]} views x {manifest['shape'][1]} "
              "images", flush=True)


def phase_students(args: argparse.Namespace, runs: list[tuple[Cell, list[str]]]) -> bool:
    """True when every student run is completed and analysed."""
    todo = [(c, r) for c, r in runs if not (completed(run_dir_of(r)) and (run_dir_of(r) / "analysis.json").exists())]
    if not todo:
        return True
    if args.launcher == "slurm":
        untrained = [r for _, r in todo if not completed(run_dir_of(r))]
        submit(args, untrained)
        if len(untrained) < len(todo):
            from pekd.analyze import main as analyze

            analyze([str(run_dir_of(r)) for _, r in todo if completed(run_dir_of(r))] + ["--quiet"])
        return not untrained
    # shortest runs first: each point of a curve is complete as early as possible (a study stopped part-way
    # reports whole cells), and a cell's runs are all the same length, so the order costs no balance
    print(f"== {len(todo)} student runs to train/analyse, {args.processes} at a time (shortest first)", flush=True)
    todo.sort(key=lambda cr: cr[0].steps())
    # a run's work is its optimizer steps (the default budgets differ 54-fold); one trained before is only analysed
    tally = Tally({run_dir_of(r): 0.0 if completed(run_dir_of(r)) else c.steps() for c, r in todo})
    with SideBySide(args.processes, "the study (`python -m pekd.study` with the same options)") as pool:
        for r in pool.map(train_and_analyze, [r for _, r in todo]):
            top1 = ": analysed" if r["last_top1"] is None else \
                f": top-1 {r['last_top1']:.2f}% ({r['seconds']:.0f} s)"
            print("   " + tally.line(r["run_dir"], f"{Path(r['run_dir']).relative_to(args.out)}{top1}"),
                  flush=True)
    return True


def study_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The study's options as study.json stores them (paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "export"}


def write_report_options(runs: Path, args: argparse.Namespace) -> list[str]:
    """The report options beside the runs (pekd.report's OPTIONS_FILE), so a plain `python -m pekd.report RUNS`
    makes the study's report -- its claims and its test, not every pair of rows at the default test."""
    from pekd.report.cli import OPTIONS_FILE

    options = report_options(study_fields(args))
    runs.mkdir(parents=True, exist_ok=True)
    note = "the claims and test pekd.study fixed for its report before any result"
    (runs / OPTIONS_FILE).write_text(json.dumps({"options": options, "why": note}, indent=1) + "\n")
    return options


def report(args: argparse.Namespace) -> None:
    from pekd.report.cli import main as report_main

    report_main([str(args.out), *write_report_options(args.out, args)])


# what pekd.report reads of a run: enough to reproduce the study's report without its checkpoints
REPORTED_FILES = ("config.yaml", "results.json", "analysis.json")


def export(args: argparse.Namespace, runs: list[tuple[Cell, list[str]]], dest: Path) -> None:
    """Copy the report's inputs of the teachers and every completed student run to dest/runs (a few KB a run, for
    committing), the study's options to dest/study.json and its report options beside the runs, and report from the
    copy into dest: `pekd.report dest/runs --out dest` then reproduces it (tests/test_study_committed.py)."""
    from pekd.report.cli import main as report_main

    teachers = [] if args.teacher else [teacher_export(args, t).parent for t in args.teacher_seed]
    copied = 0
    for d in (d for d in [*teachers, *(run_dir_of(r) for _, r in runs)] if completed(d)):
        target = dest / "runs" / d.relative_to(args.out)
        target.mkdir(parents=True, exist_ok=True)
        for name in REPORTED_FILES:
            if (d / name).is_file():
                shutil.copyfile(d / name, target / name)
        copied += 1
    if not copied:
        raise PekdError(f"no completed runs under {str(args.out)!r} to export; run the study first")
    (dest / "study.json").write_text(json.dumps({**study_fields(args), "exported_runs": copied}, indent=1) + "\n")
    print(f"exported {copied} completed runs to {dest / 'runs'}", flush=True)
    report_main([str(dest / "runs"), "--out", str(dest), *write_report_options(dest / "runs", args)])


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out = args.out.resolve()
    runs = plan(args)
    print_plan(args, runs)
    if args.dry_run:
        return
    if args.export:
        export(args, runs, args.export)
        return
    with one_driver(args.out, "`python -m pekd.study`"):
        start = time.perf_counter()
        if not phase_teacher(args):
            print("teacher submitted; rerun this command when its job has finished", flush=True)
            return
        phase_banks(args)
        if not phase_students(args, runs):
            print("student runs submitted; rerun this command when their jobs have finished", flush=True)
            return
        report(args)
        print(f"study done in {time.perf_counter() - start:.0f} s (this invocation)", flush=True)


if __name__ == "__main__":
    main()
