"""`pekd train --help`: what a Hydra user looks for, read from the config folder in a fraction of a second.

Built from the files themselves (experiments with their first comment line, every config group's options), so
it cannot fall out of date; nothing here imports torch, which is why `--help` answers before the heavy imports.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

GROUPS = ("model", "teacher", "data", "method", "trainer")

USAGE = """\
usage: pekd train [--cfg job|all] [experiment=NAME] [GROUP=OPTION ...] [key=value ...]
       torchrun --nproc_per_node N -m pekd train ...      (one process per GPU; the same overrides)
       (pekd-train and python -m pekd train are the same command)

Compose a config with Hydra and train one run in runs/<name>-<hash> (or run_dir=PATH), where <name> is the
experiment's name, else data_teacher_student_method; typing the same command again resumes it. Errors are one
`error:` line and exit status 2; a preempted run exits 3 after checkpointing.

options:
  -h, --help        this text
  --cfg job|all     print the composed, resolved config and exit (pekd has no separate Hydra runtime config, so
                    `all` prints the same); -c is short for --cfg
  key=value         set a key of the schema (pekd/config/__init__.py); every key already exists, so `+key=...` is an
                    error, and hydra.* overrides are refused (the run directory is run_dir=...)
  GROUP=OPTION      pick a config group's option (below), e.g. model=resnet110 teacher=wrn_40_2
Hydra's flags:      --config-dir / --config-name are PEKD_CONFIG_DIR, PEKD_CONFIG_PATH (below) and experiment=NAME;
                    --info is this text and --cfg job
sweeps:             `a=1,2` / --multirun are not for pekd train: use `pekd submit -m ...` (SLURM job array) or
                    `pekd submit -m --local ...` (this machine)"""

ENVIRONMENT = """\
environment:
  PEKD_DATA         datasets root: $PEKD_DATA/cifar-100-python, $PEKD_DATA/imagenet/{train,val} (default: data)
  PEKD_TEACHERS     teacher weights root: <name>_vanilla/ckpt_epoch_240.pth (mdistiller's cifar_teachers.tar
                    layout), resnet34.pth / resnet50.pth (torchvision) (default: teachers)
  PEKD_CONFIG_DIR   a replacement for pekd's whole configs/ folder
  PEKD_CONFIG_PATH  folders of your own config groups (e.g. <folder>/experiment/my_run.yaml), searched after pekd's

examples:
  pekd train experiment=cifar100_r56_r20 method.q=1 seed=2
  pekd train --cfg job experiment=cifar100_vgg13_vgg8 model=resnet110
  pekd train data=digits model=resnet8 method=ce teacher=none trainer.epochs=3

documentation: README.md and docs/ (recipes-and-teachers.md, clusters.md, ...)"""


def _description(path: Path) -> str:
    """The first comment line of a config file that is not a Hydra directive."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
        if line and not line.startswith("#"):
            break
    return ""


def _wrapped(items: list[str], indent: int = 18) -> str:
    return textwrap.fill(", ".join(items), width=118, initial_indent=" " * indent, subsequent_indent=" " * indent)


def help_text(config_dirs: list[Path]) -> str:
    """The full --help page for pekd's config folder followed by the user's own (PEKD_CONFIG_PATH)."""
    lines = [USAGE, "", "experiments (experiment=NAME, configs/experiment/ and PEKD_CONFIG_PATH folders):"]
    for path in sorted(p for d in config_dirs for p in (d / "experiment").glob("*.yaml")):
        lines.append(f"  {path.stem:<30} {textwrap.shorten(_description(path), 86, placeholder=' ...')}")
    lines += ["", "config groups (GROUP=OPTION; the defaults are in configs/config.yaml):"]
    for group in GROUPS:
        options = sorted({p.stem for d in config_dirs for p in (d / group).glob("*.yaml")}, key=str.lower)
        note = " (every model the registry can build)" if group == "model" else ""
        lines += [f"  {group}{note}:", _wrapped(options, indent=4)]
    lines += ["", ENVIRONMENT]
    return "\n".join(lines)
