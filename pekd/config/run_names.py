"""Readable names for runs whose config has no `name`: `runs/digits_resnet8_ce-18bfc8d6`, not `runs/run-18bfc8d6`.

Experiments set `name`, and their run directories (and SLURM job names) carry it. An ad-hoc run
(`pekd train data=digits model=resnet8 method=ce teacher=none`) used to be `run-<hash>` like every other ad-hoc
run, so a folder of them said nothing until each config.yaml was opened. Such a run is now named by what it
trains -- data, teacher (when one is used), student, method -- plus the same hash, so the name stays a pure
function of the config and the same command still finds its run. A run directory made under the old name before
this change is still found and resumed: typing the same command again must never start it over.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

LEGACY_NAME = "run"


def readable_name(cfg: DictConfig) -> str:
    """The config's `name`, else data_teacher_student_method (the teacher only when the method uses one)."""
    if cfg.name:
        parts = [str(cfg.name)]
    else:
        uses_teacher = cfg.teacher.mode != "none" and cfg.teacher.name and (cfg.method.name != "ce"
                                                                            or cfg.method.kd_weight > 0)
        parts = [cfg.data.source, cfg.teacher.name if uses_teacher else "", cfg.model.name, cfg.method.name]
    return re.sub(r"[^\w.=,+-]", "-", "_".join(str(p) for p in parts if p))


def prefer_existing(new: Path, legacy: Path) -> Path:
    """`legacy` when a run (or sweep) already lives there and nothing at `new` yet: its command resumes it."""
    return legacy if legacy.is_dir() and not new.exists() else new


def default_run_dir(cfg: DictConfig, root: str | Path = "runs") -> Path:
    """<root>/<readable name>-<config hash> (pekd.engine.rundir's hash, the one resumption compares)."""
    from pekd.engine.rundir import config_hash

    digest = config_hash(cfg)
    new = Path(root) / f"{readable_name(cfg)}-{digest}"
    return new if cfg.name else prefer_existing(new, Path(root) / f"{LEGACY_NAME}-{digest}")
