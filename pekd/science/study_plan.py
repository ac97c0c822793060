"""What `python -m pekd.study` trains: its methods and claims, the cells of its design, and each run's overrides and
folder, so the command (pekd/study.py) only sequences phases.

A cell is one (teacher training seed, data split, training subset, epochs): the committed study varies the subset
alone (one teacher, split 0, 24 epochs); a second teacher and a second split show what one teacher's and one
split's intervals leave out, and several epochs at one subset separate optimizer steps from data. Every run's
folder names its cell by what differs from the first study's (teacher seed 0, split 0, 24 epochs), so runs of that
study keep their folders and a run's folder is the same whichever command plans it:

    OUT/[teacher-seed1/][split1/]subset2000[-epochs96]/METHOD/seedS        OUT/teacher, OUT/teacher-seed1
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
EPOCHS = 24  # the first study's epochs at every budget: its folders do not name them


@dataclass(frozen=True)
class Cell:
    """One point of the design: which teacher, which images, how long."""

    teacher_seed: int
    split_seed: int
    subset: int
    epochs: int

    def folder(self) -> Path:
        """Relative folder of the cell's runs, naming what differs from the first study's cell."""
        parts = [f"teacher-seed{self.teacher_seed}"] * bool(self.teacher_seed) + [f"split{self.split_seed}"] * bool(
            self.split_seed)
        return Path(*parts, f"subset{self.subset}" + (f"-epochs{self.epochs}" if self.epochs != EPOCHS else ""))

    def steps(self, batch: int = 64) -> int:
        """Optimizer steps of one student run (the loader drops the last incomplete batch)."""
        return self.subset // batch * self.epochs


def cells(args: Any) -> list[Cell]:
    return [Cell(t, k, n, e) for t in args.teacher_seed for k in args.split_seed for n in args.subsets
            for e in args.epochs]


def common(args: Any, split_seed: int) -> list[str]:
    root = [f"data.root={args.data_root}"] if args.data_root else []
    return [f"data={args.data}", *root, "teacher=none", f"data.split_seed={split_seed}",
            f"data.val_subset={args.val_subset}", "trainer.amp=off", "trainer.progress=false"]


def teacher_dir(args: Any, seed: int) -> Path:
    return args.out / ("teacher" if seed == 0 else f"teacher-seed{seed}")


def teacher_export(args: Any, seed: int) -> Path:
    return args.teacher.resolve() if args.teacher else teacher_dir(args, seed) / "student.pt"


def teacher_overrides(args: Any, seed: int) -> list[str]:
    """resnet20 on every training image for --teacher-epochs (20: lr 0.1 x0.1 at 12 and 17), batch 128, wd 5e-4,
    2 threads; its training seed is what makes a second teacher (split 0: with every image the split draws
    nothing)."""
    e = args.teacher_epochs
    return [*common(args, 0), f"model.name={TEACHER}", "method=ce", "data.subset=0", "data.batch_size=128",
            f"trainer.epochs={e}", "trainer.lr=0.1", f"trainer.milestones=[{','.join(map(str, milestones(e)))}]",
            f"trainer.eval_every_epochs={min(e, 5)}",
            "trainer.threads=2", "trainer.log_every_steps=100",
            f"seed={seed}", f"run_dir={teacher_dir(args, seed)}", "name=study_teacher"]


def milestones(epochs: int) -> list[int]:
    """lr x0.1 at 60% and 85% of the epochs, as the paper's recipe (150 and 210 of 240) roughly does."""
    return sorted({max(1, int(epochs * 0.6)), max(1, int(epochs * 0.85))})


def bank_folder(args: Any, cell: Cell) -> Path:
    """One bank per teacher, split and subset (the epochs read the same one)."""
    return args.out / "banks" / Cell(cell.teacher_seed, cell.split_seed, cell.subset, EPOCHS).folder()


def student_overrides(args: Any, method: str, cell: Cell, seed: int) -> list[str]:
    name, method_overrides = METHODS[method]
    e = cell.epochs
    return [*common(args, cell.split_seed), f"model.name={STUDENT}", f"teacher.name={TEACHER}",
            f"teacher.weights={teacher_export(args, cell.teacher_seed)}", f"teacher.bank={bank_folder(args, cell)}",
            f"bank.views={VIEWS[args.data]}", "bank.dtype=float32", *method_overrides, f"seed={seed}",
            f"data.subset={cell.subset}",
            "data.batch_size=64", f"trainer.epochs={e}", "trainer.lr=0.05",
            f"trainer.milestones=[{','.join(map(str, milestones(e)))}]", f"trainer.eval_every_epochs={e}",
            "trainer.threads=1", "trainer.log_every_steps=200", "trainer.analyze=true",
            f"run_dir={args.out / cell.folder() / method / f'seed{seed}'}", f"name='{name}'"]


def plan(args: Any) -> list[tuple[Cell, list[str]]]:
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    return [(c, student_overrides(args, m, c, s)) for c in cells(args) for s in seeds for m in args.methods]


def as_list(value: Any) -> list[Any]:
    """A study.json field as a list: the first study stored one epochs and one split seed as numbers."""
    return value if isinstance(value, list) else [value]


def report_options(study: dict[str, Any]) -> list[str]:
    """`pekd.report` options of a study (its study.json fields, or vars of its arguments): the claims among its
    methods, along every axis it varies (the subset where it varies nothing), by its test. Fixed before any
    result: the paired t-test at 5 seeds, where Holm needs p far below the exact sign-flip test's floor (2/32); the
    exact test where the seeds allow it (9 seeds: 2/512), the report printing the other's p beside it."""
    names = [METHODS[k][0] for k in study["methods"]]
    compare = [a for c in CLAIMS if all(m in names for m in c.split(">")) for a in ("--compare", c)]
    axes = [("data.subset", "subsets"), ("trainer.epochs", "epochs"), ("data.split_seed", "split_seed"),
            ("teacher.weights", "teacher_seed")]
    along = [key for key, field in axes if len(as_list(study.get(field, 0))) > 1] or ["data.subset"]
    return [a for key in along for a in ("--along", key)] + compare + ["--test", study.get("test", "t")]
