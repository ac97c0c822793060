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

A budget is a training subset drawn from the full training set (one data split, so every seed and method of a
budget sees the same images) trained for the same number of epochs: data.subset=500 at 24 epochs is the demo's
point, 168 steps. Every run is an ordinary pekd run directory named by what it is, so rerunning the same command
skips finished runs and resumes unfinished ones; with `--launcher slurm` each phase is submitted through
`launchers/submit.py` and the command is simply rerun when a phase's jobs have finished.

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
from pekd.science.side_by_side import SideBySide, Tally

# (run folder, row name in the report, overrides) of every student method the study can train
METHODS: dict[str, tuple[str, list[str]]] = {
    "ce": ("CE", ["method=ce", "teacher.mode=none"]),
    "kd": ("KD T=4", ["method=kd", "teacher.mode=online", "bank.online_same_views=true"]),
    "kd_proj": ("KD T=4 + logit projector", ["method=kd", "method.logit_projector=true", "teacher.mode=online",
                                             "bank.online_same_views=true"]),
    "fd": ("FD no projector", ["method=fd", "teacher.mode=bank"]),
    "pefd_q1": ("PEFD q=1", ["method=pefd", "method.q=1", "teacher.mode=bank"]),
    "pefd_q3": ("PEFD q=3", ["method=pefd", "method.q=3", "teacher.mode=bank"]),
}
# the paper's two claims, the extended paper's third (a projector helps logit distillation), and PEFD against CE
CLAIMS = ["PEFD q=1>FD no projector", "PEFD q=3>PEFD q=1", "KD T=4 + logit projector>KD T=4", "PEFD q=1>CE"]
# how many distinct views a sample has under each data set's training augmentation: a bank of all of them is exact
VIEWS = {"fashion_mnist": 2, "digits": 1}
TEACHER = "resnet20"
STUDENT = "resnet8"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Rerun the same command to resume; finished runs are skipped.")
    ap.add_argument("--out", type=Path, default=Path("runs/study"), help="folder for every run of the study")
    ap.add_argument("--subsets", default="500,2000,7000,27000",
                    help="training budgets: images drawn from the 60,000 (comma list), each for --epochs")
    ap.add_argument("--epochs", type=int, default=24, help="epochs per student run at every budget")
    ap.add_argument("--methods", default="ce,fd,pefd_q1,pefd_q3", help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--seeds", type=int, default=5, help="paired training seeds per method and budget")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0, help="which subsets the budgets take (the pilot used 1)")
    ap.add_argument("--teacher", type=Path, help="use this teacher export instead of training one (student.pt)")
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
    args.subsets = [int(s) for s in args.subsets.split(",")]
    args.methods = args.methods.split(",")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.seeds < 2:
        ap.error("--seeds must be at least 2: a paired comparison needs several seeds")
    return args


def common(args: argparse.Namespace) -> list[str]:
    root = [f"data.root={args.data_root}"] if args.data_root else []
    return [f"data={args.data}", *root, "teacher=none", f"data.split_seed={args.split_seed}",
            f"data.val_subset={args.val_subset}", "trainer.amp=off", "trainer.progress=false"]


def teacher_export(args: argparse.Namespace) -> Path:
    return args.teacher.resolve() if args.teacher else args.out.resolve() / "teacher" / "student.pt"


def teacher_overrides(args: argparse.Namespace) -> list[str]:
    """resnet20 on all 60,000 images for 20 epochs: batch 128, lr 0.1 x0.1 at 12 and 17, wd 5e-4, 2 threads."""
    return [*common(args), f"model.name={TEACHER}", "method=ce", "data.subset=0", "data.batch_size=128",
            "trainer.epochs=20", "trainer.lr=0.1", "trainer.milestones=[12,17]", "trainer.eval_every_epochs=5",
            "trainer.threads=2", "trainer.log_every_steps=100",
            "seed=0", f"run_dir={args.out.resolve() / 'teacher'}", "name=study_teacher"]


def milestones(epochs: int) -> list[int]:
    """lr x0.1 at 60% and 85% of the epochs, as the paper's recipe (150 and 210 of 240) roughly does."""
    return sorted({max(1, int(epochs * 0.6)), max(1, int(epochs * 0.85))})


def bank_folder(args: argparse.Namespace, subset: int) -> Path:
    return args.out.resolve() / "banks" / f"subset{subset}"


def student_overrides(args: argparse.Namespace, method: str, subset: int, seed: int) -> list[str]:
    name, method_overrides = METHODS[method]
    e = args.epochs
    return [*common(args), f"model.name={STUDENT}", f"teacher.name={TEACHER}",
            f"teacher.weights={teacher_export(args)}", f"teacher.bank={bank_folder(args, subset)}",
            f"bank.views={VIEWS[args.data]}", "bank.dtype=float32", *method_overrides, f"seed={seed}",
            f"data.subset={subset}",
            "data.batch_size=64", f"trainer.epochs={e}", "trainer.lr=0.05",
            f"trainer.milestones=[{','.join(map(str, milestones(e)))}]", f"trainer.eval_every_epochs={e}",
            "trainer.threads=1", "trainer.log_every_steps=200", "trainer.analyze=true",
            f"run_dir={args.out.resolve() / f'subset{subset}' / method / f'seed{seed}'}", f"name='{name}'"]


def steps(subset: int, epochs: int, batch: int = 64) -> int:
    """Optimizer steps of one student run (the loader drops the last incomplete batch)."""
    return subset // batch * epochs


def run_dir_of(overrides: list[str]) -> Path:
    return Path(next(o for o in overrides if o.startswith("run_dir=")).split("=", 1)[1])


def subset_of(overrides: list[str]) -> int:
    return int(next(o for o in overrides if o.startswith("data.subset=")).split("=")[1])


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


def plan(args: argparse.Namespace) -> list[list[str]]:
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    return [student_overrides(args, m, n, s) for n in args.subsets for s in seeds for m in args.methods]


def print_plan(args: argparse.Namespace, runs: list[list[str]]) -> None:
    per = {n: steps(n, args.epochs) for n in args.subsets}
    total = sum(per[n] for n in args.subsets) * args.seeds * len(args.methods)
    done = sum(completed(run_dir_of(r)) for r in runs)
    print(f"study {args.out}: {len(runs)} student runs ({len(args.methods)} methods x {args.seeds} seeds x "
          f"{len(args.subsets)} budgets; {done} completed), {total:,} optimizer steps in all; steps per budget: "
          + ", ".join(f"{n} images -> {s}" for n, s in per.items()), flush=True)


def phase_teacher(args: argparse.Namespace) -> bool:
    """True when the teacher export exists; otherwise trains it (local) or submits it (slurm)."""
    if teacher_export(args).exists():
        return True
    overrides = teacher_overrides(args)
    print(f"== teacher {TEACHER} on every {args.data} training image, 20 epochs", flush=True)
    if args.launcher == "slurm":
        submit(args, [overrides])
        return False
    r = train(overrides)
    print(f"   top-1 {r['last_top1']:.2f}% ({r['seconds']:.0f} s)", flush=True)
    return True


def phase_banks(args: argparse.Namespace) -> None:
    from pekd.teacher.precompute import precompute
    from pekd.train import compose_config

    for n in args.subsets:
        manifest = precompute(compose_config(student_overrides(args, "fd", n, args.first_seed)))
        print(f"== feature bank {bank_folder(args, n)}: K={VIEWS[args.data]} views x {manifest['shape'][1]} images",
              flush=True)


def phase_students(args: argparse.Namespace, runs: list[list[str]]) -> bool:
    """True when every student run is completed and analysed."""
    todo = [r for r in runs if not (completed(run_dir_of(r)) and (run_dir_of(r) / "analysis.json").exists())]
    if not todo:
        return True
    if args.launcher == "slurm":
        untrained = [r for r in todo if not completed(run_dir_of(r))]
        submit(args, untrained)
        if len(untrained) < len(todo):
            from pekd.analyze import main as analyze

            analyze([str(run_dir_of(r)) for r in todo if completed(run_dir_of(r))] + ["--quiet"])
        return not untrained
    # smallest budget first: each point of the curve is complete as early as possible (a study stopped part-way
    # reports whole budgets), and a budget's runs are all the same length, so the order costs no balance
    print(f"== {len(todo)} student runs to train/analyse, {args.processes} at a time (smallest budget first)",
          flush=True)
    todo.sort(key=subset_of)
    # a run's work is its optimizer steps (the default budgets differ 54-fold); one trained before is only analysed
    tally = Tally({run_dir_of(r): 0.0 if completed(run_dir_of(r)) else steps(subset_of(r), args.epochs)
                   for r in todo})
    with SideBySide(args.processes, "the study (`python -m pekd.study` with the same options)") as pool:
        for r in pool.map(train_and_analyze, todo):
            top1 = ": analysed" if r["last_top1"] is None else \
                f": top-1 {r['last_top1']:.2f}% ({r['seconds']:.0f} s)"
            print("   " + tally.line(r["run_dir"], f"{Path(r['run_dir']).relative_to(args.out.resolve())}{top1}"),
                  flush=True)
    return True


def report_options(methods: list[str]) -> list[str]:
    """`pekd.report` options of the study's report: the claims among `methods`, along the budget. Decided by the
    paired t-test, fixed before any result: Holm across (budgets x claims) comparisons needs p far below the exact
    sign-flip test's floor at 5 seeds (2/32); the report prints the exact p beside it."""
    names = [METHODS[k][0] for k in methods]
    compare = [a for c in CLAIMS if all(m in names for m in c.split(">")) for a in ("--compare", c)]
    return ["--along", "data.subset", *compare, "--test", "t"]


def write_report_options(runs: Path, methods: list[str]) -> None:
    """The report options beside the runs (pekd.report's OPTIONS_FILE), so a plain `python -m pekd.report RUNS`
    makes the study's report -- its claims and its test, not every pair of rows at the default test."""
    from pekd.report.cli import OPTIONS_FILE

    runs.mkdir(parents=True, exist_ok=True)
    note = "the claims and test pekd.study fixed for its report before any result"
    (runs / OPTIONS_FILE).write_text(json.dumps({"options": report_options(methods), "why": note}, indent=1) + "\n")


def report(args: argparse.Namespace) -> None:
    from pekd.report.cli import main as report_main

    write_report_options(args.out, args.methods)
    report_main([str(args.out), *report_options(args.methods)])


# what pekd.report reads of a run: enough to reproduce the study's report without its checkpoints
REPORTED_FILES = ("config.yaml", "results.json", "analysis.json")


def export(args: argparse.Namespace, runs: list[list[str]], dest: Path) -> None:
    """Copy the report's inputs of the teacher and every completed student run to dest/runs (a few KB a run, for
    committing), the study's options to dest/study.json and its report options beside the runs, and report from the
    copy into dest: `pekd.report dest/runs --out dest` then reproduces it (tests/test_study_committed.py)."""
    from pekd.report.cli import main as report_main

    dirs = [args.out / "teacher", *(run_dir_of(r) for r in runs)]
    copied = 0
    for d in (d for d in dirs if completed(d)):
        target = dest / "runs" / d.relative_to(args.out)
        target.mkdir(parents=True, exist_ok=True)
        for name in REPORTED_FILES:
            if (d / name).is_file():
                shutil.copyfile(d / name, target / name)
        copied += 1
    if not copied:
        raise PekdError(f"no completed runs under {str(args.out)!r} to export; run the study first")
    plan_of = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "export"}
    (dest / "study.json").write_text(json.dumps({**plan_of, "exported_runs": copied}, indent=1) + "\n")
    print(f"exported {copied} completed runs to {dest / 'runs'}", flush=True)
    write_report_options(dest / "runs", args.methods)
    report_main([str(dest / "runs"), "--out", str(dest), *report_options(args.methods)])


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
