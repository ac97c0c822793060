"""What a job would find missing only after its queue wait, checked on the submitting node before anything is queued.

A run's teacher weights, data, feature bank and .betons must be on a filesystem the compute nodes share, so the
login node sees them too: a missing file is found here in a second instead of hours later in the job's log. Only
existence and kind are checked (reading an ImageNet tree or hashing a bank is the job's business).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pekd.errors import PekdError
from pekd.teacher.manifest import holds_logits


def _needs_teacher(cfg: DictConfig) -> bool:
    return cfg.teacher.mode != "none" and bool(cfg.teacher.name) and (cfg.method.name != "ce"
                                                                      or cfg.method.kd_weight > 0)


def data_problem(cfg: DictConfig) -> str | None:
    """Why the run's data root cannot be read as its source (None when it looks right)."""
    source, root = cfg.data.source, str(cfg.data.root)
    if source == "cifar100":
        base = Path(root) / "cifar-100-python"
        base = base if base.is_dir() else Path(root)
        missing = [n for n in ("train", "test") if not (base / n).is_file()]
        if missing:
            return (f"data.root={root!r}: no CIFAR-100 {'/'.join(missing)} pickle in {str(base)!r}; it must hold "
                    "cifar-100-python/{train,test,meta} (set PEKD_DATA or data.root)")
    elif source == "imagefolder":
        missing = [s for s in ("train", "val") if not (Path(root) / s).is_dir()]
        if missing:
            return (f"data.root={root!r}: no {'/'.join(missing)} folder; it must hold train/<class>/<image> and "
                    "val/<class>/<image> (set PEKD_DATA or data.root)")
    elif source == "fashion_mnist":
        from pekd.data.sources import fashion_mnist_dir

        try:
            fashion_mnist_dir(root)
        except PekdError as e:
            return str(e)
    return None


def run_problems(cfg: DictConfig) -> list[str]:
    """Every missing input of one run, one message each."""
    problems = []
    if _needs_teacher(cfg) and cfg.teacher.mode == "online" and not Path(cfg.teacher.weights).is_file():
        problems.append(f"teacher.weights={cfg.teacher.weights!r} does not exist on this node; put the teacher's "
                        "checkpoint on the shared filesystem (docs/recipes-and-teachers.md says where to get one)")
    if cfg.model.weights and not Path(cfg.model.weights).is_file():
        problems.append(f"model.weights={cfg.model.weights!r} does not exist on this node")
    manifest = Path(cfg.teacher.bank) / "manifest.json"
    if _needs_teacher(cfg) and cfg.teacher.mode == "bank" and not manifest.is_file():
        problems.append(f"teacher.bank={cfg.teacher.bank!r} holds no manifest.json (missing or unfinished bank); "
                        "build it with `pekd precompute` first")
    elif cfg.teacher.mode == "bank" and cfg.method.kd_weight > 0 and holds_logits(manifest) is False:
        problems.append(f"teacher.bank={cfg.teacher.bank!r} holds no teacher logits, which Hinton KD reads; build a "
                        "bank with them into a new folder (`pekd precompute` with this run's overrides) or use "
                        "teacher.mode=online")
    if cfg.data.pipeline == "ffcv":
        for key in ("train_beton", "val_beton"):
            value = cfg.data[key]
            if not value or not Path(value).is_file():
                problems.append(f"data.{key}={value!r} does not exist on this node; write it with "
                                "`pekd write-dataset`")
    if (problem := data_problem(cfg)) is not None:
        problems.append(problem)
    return problems


def inputs_problems(cfgs: list[Any], pending_teacher_ok: bool = False) -> tuple[list[str], list[str]]:
    """Problems of all runs (each message once) and notes: with a job dependency (pending_teacher_ok), a teacher
    file that the awaited job is to write is a note, not an error."""
    from pekd.config.overrides import check_model_names

    problems: list[str] = []
    notes: list[str] = []
    for cfg in cfgs:
        try:
            check_model_names(cfg)
        except PekdError as e:
            problems.append(str(e))
        for p in run_problems(cfg):
            target = notes if pending_teacher_ok and p.startswith(("teacher.weights=", "teacher.bank=")) else problems
            if p not in target:
                target.append(p)
    return problems, notes
