"""`python -m pekd.demo`: test the paper's two claims on Fashion-MNIST, paired by seed, in about ten minutes.

Claim 1: a projector helps feature distillation even when the student's and the teacher's feature sizes match
(PEFD q=1 vs FD without a projector). Claim 2: an ensemble of projectors helps more (PEFD q=3 vs q=1). CE and
Hinton KD are trained beside them for context. One teacher (resnet20, trained first), resnet8 students (the same
64-d feature, so FD without a projector is possible) with several training seeds on the same training subset,
each evaluated once at the end on the full test set; `pekd.report` pairs the methods by seed, and each run's final
evaluation measures the mechanism the paper argues (train/test gap, CKA to the teacher, calibration, dead
projector units, alignment) as it goes (trainer.analyze=true: the diagnostics of `pekd.analyze` from the
evaluation's own forward pass instead of a second pass over the test set, which took a fifth of the demo's time).

What makes it cheap: a feature bank (Fashion-MNIST's flip-only augmentation has exactly two views per image, so
a K=2 bank holds both and the bank runs equal online runs), one evaluation per run that also gives the
diagnostics, and two single-threaded training processes on the two cores. The bank also holds the teacher's
logits (bank.logits=true), so KD reads them too instead of running the teacher (it took 1.6x a bank run). Every
run is an ordinary pekd run directory composed from the same Hydra configs as `python -m pekd.train`, so rerunning
the demo reuses finished runs and resumes unfinished ones. The console gets one line per finished student run
with the phase's progress and ETA (`[12/35] fd/seed3: top-1 77.81% (41 s); phase eta 4m10s`); each run's
per-step lines are in its logs/rank0.log (pekd.science.side_by_side).

The sizes were chosen from a pilot on another data split and other seeds (`--split-seed 1 --first-seed 100`,
docs/, "The demo"), for the time budget alone; the verdicts are reported whatever they are. Seven seeds are what
the time saved buys, and the fewest with which the exact sign-flip test can support a claim after Holm over the
two claims (its smallest p is 2/2^7 = 0.016, times two = 0.031 < 0.05; with six it is 0.031 x 2 = 0.062): the
verdicts are the exact test's (`pekd.report --test perm`), which assumes nothing about the differences'
distribution. The students' budget, 500 images x 24 epochs (168 optimizer steps), is the smallest point of the
study's curve (`python -m pekd.study`, data.subset from 500 up at 24 epochs; results in docs/study/), where the
teacher is a converged resnet20 (93.8%) instead of the demo's 2-epoch one.

Time on a 2-core CPU without native bf16 (fp32), measured by ratio (`bash bench/demo_time.sh`; docs/statistics.md,
"Time"): with torch restricted to AVX2 kernels and no native bf16 (`ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2`, which reproduces an AVX2-only EPYC's numbers to the last digit), this demo takes
0.91-0.94 of the time of the 6-seed, second-pass demo that took 569 s idle on such an EPYC: about 516-536 s there,
inside the 600 s budget (149 s in bf16 on a 2-core EPYC with AVX-512 BF16).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from pekd.engine.status import completed
from pekd.errors import PekdError, user_errors_exit
from pekd.science.one_driver import one_driver
from pekd.science.side_by_side import SideBySide, Tally
from pekd.study import run_dir_of

METHODS = [  # (run folder, row name in the report, overrides): the student runs of every seed
    ("ce", "CE", ["method=ce", "teacher.mode=none"]),
    ("kd", "KD T=4", ["method=kd", "teacher.mode=bank"]),
    ("fd", "FD no projector", ["method=fd", "teacher.mode=bank"]),
    ("pefd_q1", "PEFD q=1", ["method=pefd", "method.q=1", "teacher.mode=bank"]),
    ("pefd_q3", "PEFD q=3", ["method=pefd", "method.q=3", "teacher.mode=bank"]),
]
CLAIMS = [("claim 1: a projector helps when d_s = d_t", "PEFD q=1>FD no projector"),
          ("claim 2: an ensemble of projectors helps more", "PEFD q=3>PEFD q=1")]


def _train(overrides: list[str]) -> dict[str, Any]:
    from pekd.train import run_to_completion

    return run_to_completion(overrides, "`python -m pekd.demo`")


def _analyze(run_dirs: list[str]) -> None:
    from pekd.analyze import main as analyze

    analyze([*run_dirs, "--quiet"])


def _unanalysed(run_dirs: list[str]) -> list[str]:
    """Runs without a current analysis.json: finished by an earlier demo (their final evaluation ran then) or by
    a pekd that wrote fewer diagnostics. A second pass measures them."""
    import json

    def current(run_dir: str) -> bool:
        try:
            return "test_pass" in json.loads((Path(run_dir) / "analysis.json").read_text())
        except (OSError, ValueError):
            return False

    return [d for d in run_dirs if not current(d)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the demo's run directories")
    ap.add_argument("--seeds", type=int, default=7, help="training seeds per method (paired across methods; 7 is "
                    "the fewest with which the exact test can support one of the two claims after Holm)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0, help="which training subset (the pilot used another)")
    ap.add_argument("--teacher-subset", type=int, default=10000)
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--student-subset", type=int, default=500)
    ap.add_argument("--student-epochs", type=int, default=24)
    ap.add_argument("--val-subset", type=int, default=0, help="test images (0: the full test set, 10,000)")
    ap.add_argument("--processes", type=int, default=2, help="student runs trained side by side, one thread each")
    ap.add_argument("--amp", choices=("auto", "off"), default="auto",
                    help="trainer.amp of every run: auto (bf16 where the CPU has native bf16) or off (fp32, as on a "
                    "CPU without it: how the demo's 600 s budget is measured)")
    ap.add_argument("--data-root", type=Path, help="Fashion-MNIST's idx files or a torchvision download root (sets "
                    "PEKD_FASHION_MNIST; default: that variable, else /usr/share/datasets/fashion-mnist)")
    args = ap.parse_args(argv)
    if args.data_root:  # through the environment, so configs/data/fashion_mnist.yaml and the workers see it
        os.environ["PEKD_FASHION_MNIST"] = str(args.data_root.resolve())
    if args.seeds < 2:
        ap.error("--seeds must be at least 2: a paired comparison needs several seeds")
    return args


def teacher_overrides(args: argparse.Namespace) -> list[str]:
    te = args.teacher_epochs
    return ["data=fashion_mnist", "model.name=resnet20", "method=ce", "teacher=none", "trainer.progress=false",
            f"data.subset={args.teacher_subset}", f"data.split_seed={args.split_seed}",
            f"data.val_subset={args.val_subset}", "data.batch_size=128", f"trainer.eval_every_epochs={te}",
            f"trainer.epochs={te}", "trainer.lr=0.1", f"trainer.milestones=[{max(te - 1, 1)}]",
            "trainer.log_every_steps=20", f"trainer.amp={args.amp}", f"run_dir={args.out.resolve() / 'teacher'}",
            "name=demo_teacher"]


def refuse_an_earlier_demo(out: Path) -> None:
    """A demo folder of a pekd before banks held logits: its bank has none and its KD runs ran the teacher online,
    so this demo would refuse both, one after the other. Say at once what to do, before anything is written (no
    bank yet, or a damaged one, is left to precompute, which says which in its own line)."""
    from pekd.teacher.manifest import holds_logits

    if holds_logits(out / "bank" / "manifest.json") is False:
        raise PekdError(f"{out} holds a demo of an earlier pekd (its feature bank has no teacher logits, which the "
                        f"demo's KD runs now read); move it aside (mv {out} {out}.old) or give --out a new folder")


def milestones(epochs: int) -> list[int]:
    """lr x0.1 at 60% and 85% of the epochs, as the paper's recipe (150 and 210 of 240) roughly does."""
    return sorted({max(1, int(epochs * 0.6)), max(1, int(epochs * 0.85))})


def student_overrides(args: argparse.Namespace, folder: str, name: str, method: list[str], seed: int) -> list[str]:
    se, out = args.student_epochs, args.out.resolve()
    return ["data=fashion_mnist", "model.name=resnet8", "teacher=none", "teacher.name=resnet20",
            f"teacher.weights={out / 'teacher' / 'student.pt'}", f"teacher.bank={out / 'bank'}", "bank.views=2",
            "bank.dtype=float32", "bank.logits=true", *method, f"seed={seed}", f"data.subset={args.student_subset}",
            f"data.split_seed={args.split_seed}", f"data.val_subset={args.val_subset}", "data.batch_size=64",
            f"trainer.epochs={se}", "trainer.lr=0.05",
            f"trainer.milestones=[{','.join(map(str, milestones(se)))}]", f"trainer.eval_every_epochs={se}",
            "trainer.threads=1", "trainer.progress=false", "trainer.log_every_steps=50", f"trainer.amp={args.amp}",
            "trainer.analyze=true", f"run_dir={out / folder / f'seed{seed}'}", f"name='{name}'"]


def print_claims(report_json: Path) -> None:
    """Each claim in one line: the paired difference, its CI, the p-values and the verdict, from report.json."""
    import json

    from pekd.report.stats import fmt_p

    comparisons = {f"{c['a']}>{c['b']}": c for c in json.loads(report_json.read_text())["comparisons"]}
    print()
    for title, spec in CLAIMS:
        c = comparisons[spec]
        best = c["best_top1"]
        ci = "" if best["ci"] is None else f" [95% CI {best['ci'][0]:+.2f}, {best['ci'][1]:+.2f}]"
        print(f"{title} ({c['a']} vs {c['b']}, {c['n']} paired seeds): {best['mean_diff']:+.2f} points{ci}, "
              f"paired t p={fmt_p(c['p_ttest']) if c['p_ttest'] is not None else '–'}, sign-flip p="
              f"{fmt_p(c['p_perm'])} -> {c['verdict']}")


def print_budget(args: argparse.Namespace, run_dir: str) -> None:
    """Where this budget sits on the study's curve, in one line."""
    import json

    steps = json.loads((Path(run_dir) / "results.json").read_text())["global_step"]
    print(f"\nbudget: {args.student_subset} images x {args.student_epochs} epochs = {steps} optimizer steps per "
          "student, the smallest point of the study's curve (`python -m pekd.study` varies data.subset from 500 up "
          "at 24 epochs with a converged 93.8% teacher; its results are in docs/study/).")


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out.resolve()
    refuse_an_earlier_demo(out)
    with one_driver(out, "`python -m pekd.demo`"):
        demo(args, out)


def demo(args: argparse.Namespace, out: Path) -> None:
    """Teacher, bank, students side by side, diagnostics, the report and each claim's line."""
    from pekd.report.cli import main as report
    from pekd.teacher.precompute import precompute
    from pekd.train import compose_config

    start = time.perf_counter()
    phases: dict[str, float] = {}
    print(f"== teacher resnet20: {args.teacher_subset} images, {args.teacher_epochs} epochs", flush=True)
    teacher = _train(teacher_overrides(args))
    print(f"   top-1 {teacher['last_top1']:.2f}% ({teacher['seconds']:.0f} s)", flush=True)
    phases["teacher"] = time.perf_counter() - start

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    bank_cfg = compose_config(student_overrides(args, *METHODS[2], seeds[0]))
    manifest = precompute(bank_cfg)
    print(f"== feature bank {out / 'bank'}: K=2 views x {manifest['shape'][1]} images", flush=True)
    phases["bank"] = time.perf_counter() - start - sum(phases.values())

    jobs = [student_overrides(args, *m, s) for s in seeds for m in METHODS]
    print(f"== {len(jobs)} student runs ({len(METHODS)} methods x {args.seeds} seeds, {args.student_subset} images, "
          f"{args.student_epochs} epochs), {args.processes} at a time", flush=True)
    run_dirs = []
    tally = Tally({run_dir_of(job): 0.0 if completed(run_dir_of(job)) else 1.0 for job in jobs})
    with SideBySide(args.processes, "`python -m pekd.demo` with the same options") as pool:
        for r in pool.map(_train, jobs):
            print("   " + tally.line(r["run_dir"], f"{Path(r['run_dir']).relative_to(out)}: top-1 "
                                     f"{r['last_top1']:.2f}% ({r['seconds']:.0f} s)"), flush=True)
            run_dirs.append(r["run_dir"])
        phases["students"] = time.perf_counter() - start - sum(phases.values())
        todo = _unanalysed(run_dirs)
        print(f"== mechanism diagnostics: {len(run_dirs) - len(todo)} runs from their final evaluation"
              + (f", {len(todo)} by a second pass (pekd.analyze)" if todo else ""), flush=True)
        if todo:
            list(pool.map(_analyze, [todo[i::args.processes] for i in range(args.processes)]))
    phases["analyze"] = time.perf_counter() - start - sum(phases.values())

    compare = [arg for _, claim in CLAIMS for arg in ("--compare", claim)]
    print(f"\n## pekd demo: Fashion-MNIST, teacher resnet20 -> student resnet8, {args.seeds} seeds "
          f"(data split {args.split_seed}, training seeds {seeds[0]}..{seeds[-1]}), "
          f"{args.val_subset or 'all 10,000'} test images\n", flush=True)
    report([str(out), *compare, "--test", "perm"])
    print_claims(out / "report.json")
    print_budget(args, run_dirs[0])
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
    print(f"\n{timing}; {time.perf_counter() - start:.0f} s in all.  TensorBoard: tensorboard --logdir {out}")


if __name__ == "__main__":
    main()
