"""`python -m pekd.demo`: train a teacher, then students with CE, KD, FD, PEFD q=1 and PEFD q=3, and print a table.

A small-scale demonstration on real data (Fashion-MNIST from Debian's package), sized for 2 CPU cores and about
ten minutes -- not the paper's benchmark. The teacher learns from many images; the students see only a small
subset, which is where what the teacher knows shows up in the students' accuracy. Every run is an ordinary pekd
run directory (config, checkpoints, TensorBoard events, results.json), composed from the same Hydra configs as
`python -m pekd.train`, so rerunning the demo resumes or reuses finished runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pekd.errors import PekdError, user_errors_exit

STUDENTS = [  # (label, overrides)
    ("CE (no teacher)", ["method=ce", "teacher.mode=none"]),
    ("Hinton KD (T=4)", ["method=kd"]),
    ("FD, no projector", ["method=fd"]),
    ("PEFD q=1 (FD + 1 projector)", ["method=pefd", "method.q=1"]),
    ("PEFD q=3", ["method=pefd", "method.q=3"]),
]


def _common(args: argparse.Namespace) -> list[str]:
    return [f"data={args.data}", f"seed={args.seed}", "trainer.progress=false", "trainer.log_every_steps=10",
            f"data.val_subset={args.val_subset}", f"trainer.threads={args.threads}"]


def _run(overrides: list[str], label: str) -> dict:
    from pekd.engine.distributed import shutdown
    from pekd.train import compose_config, run

    cfg = compose_config(overrides)
    t0 = time.perf_counter()
    print(f"\n== {label}: {cfg.run_dir}", flush=True)
    results = run(cfg)
    shutdown()
    if results["status"] != "completed":
        raise PekdError(f"{label} stopped with status {results['status']}; rerun `python -m pekd.demo` to resume")
    print(f"   best top-1 {results['best_top1']:.2f}%  last {results['last_top1']:.2f}%  "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return results


def table(rows: list[tuple[str, dict, Path]]) -> str:
    lines = ["| method | best top-1 (%) | last top-1 (%) | TensorBoard log |", "|---|---:|---:|---|"]
    for label, r, run_dir in rows:
        lines.append(f"| {label} | {r['best_top1']:.2f} | {r['last_top1']:.2f} | {run_dir / 'tb'} |")
    return "\n".join(lines)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="folder for the demo's run directories")
    ap.add_argument("--data", default="fashion_mnist", help="data config: fashion_mnist (default) or digits")
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--teacher-subset", type=int, default=15000)
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--student-subset", type=int, default=2000)
    ap.add_argument("--student-epochs", type=int, default=12)
    ap.add_argument("--val-subset", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    start = time.perf_counter()

    te = args.teacher_epochs
    teacher_dir = out / "teacher"
    teacher = _run(_common(args) + [
        f"model.name={args.teacher}", "method=ce", "teacher=none", f"data.subset={args.teacher_subset}",
        "data.batch_size=128", f"trainer.epochs={te}", "trainer.lr=0.1", "trainer.weight_decay=5e-4",
        f"trainer.milestones=[{max(te - 1, 1)}]", f"run_dir={teacher_dir}", "name=demo_teacher"],
        f"teacher {args.teacher}")

    se = args.student_epochs
    rows = [(f"teacher: {args.teacher} ({args.teacher_subset} images)", teacher, teacher_dir)]
    for label, extra in STUDENTS:
        slug = "_".join(o.split("=")[-1] for o in extra if not o.startswith("teacher.mode"))
        run_dir = out / f"student_{slug}"
        teacher_overrides = [] if "teacher.mode=none" in extra else [
            f"teacher.name={args.teacher}", f"teacher.weights={teacher_dir / 'student.pt'}"]
        results = _run(_common(args) + [
            f"model.name={args.student}", "teacher=none", *teacher_overrides, "teacher.mode=online", *extra,
            f"data.subset={args.student_subset}", "data.batch_size=64", f"trainer.epochs={se}", "trainer.lr=0.05",
            f"trainer.milestones=[{int(se * 0.6)},{int(se * 0.85)}]", f"run_dir={run_dir}",
            f"name=demo_{slug}"], f"student {args.student}: {label}")
        rows.append((f"{args.student}: {label}", results, run_dir))

    print(f"\n## pekd demo: {args.data}, teacher {args.teacher} -> student {args.student} "
          f"({args.student_subset} training images, {se} epochs, {args.val_subset} test images)\n")
    print(table(rows))
    summary = {label: {"best_top1": r["best_top1"], "last_top1": r["last_top1"], "run_dir": str(d)}
               for label, r, d in rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nTensorBoard: tensorboard --logdir {out}    ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
