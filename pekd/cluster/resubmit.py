"""`pekd status --failed`: the commands that submit again exactly the failed runs of a sweep, and no other.

A failed run with a config.yaml is resubmitted with `pekd submit --resume RUN_DIR ...` (its own config, the
same run directory, resumed from its newest checkpoint); one that failed before writing its config (its job died
before the trainer started) with its recorded overrides and `run_dir=` (one command each: a sweep's points are
not a product any more once some are left out). The resources -- nodes, GPUs, partition, time, --setup lines,
--sbatch options -- are those of the submission that launched the run, read from its launch record with
submit.py's own parser; --after and --dependency are dropped (the awaited jobs are over: the run did start) and
--folder is the record's, so the new launch record lands beside the old one and `pekd status` finds it. Runs with
no launch record were started by `pekd train`: the same command with its run_dir resumes them.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import ModuleType

from pekd.cluster.sweep import Launch
from pekd.errors import PekdError

# submit.py options that do not carry over to a resubmission (see the module docstring)
NOT_CARRIED = {"multirun", "resume", "overrides", "dry_run", "folder", "after", "dependency"}


def _submit() -> ModuleType:
    """launchers/submit.py, whose parser reads the recorded commands: pekd.launchers in an install, launchers/ in a
    checkout on the path."""
    try:
        from pekd.launchers import submit
    except ImportError:
        from launchers import submit  # type: ignore[no-redef]
    return submit


def submit_options(command: tuple[str, ...], folder: Path) -> list[str]:
    """The options of a recorded submit command that a resubmission repeats, as they would be typed."""
    submit = _submit()
    try:
        args, defaults = vars(submit.parse_args(list(command[1:]))), vars(submit.parse_args([]))
    except SystemExit:  # argparse has printed why
        raise PekdError(f"the command of a launch record in {str(folder / 'launches')!r} cannot be read by this "
                        f"launchers/submit.py ({shlex.join(command)}); resubmit those runs by hand") from None
    options: list[str] = []
    for name, value in args.items():
        if name in NOT_CARRIED or value == defaults.get(name):
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            options.append(flag)
        elif isinstance(value, list):
            options += [part for v in value for part in (flag, str(v))]
        else:
            options += [flag, str(value)]
    return [*options, "--folder", str(folder)]


def _without_run_dir(overrides: tuple[str, ...] | list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+") != "run_dir"]


def _train_overrides(argv: list[str]) -> list[str] | None:
    """The overrides of a recorded training command line (meta.json's argv), None if it is no training command:
    `python -m pekd.train ...` and `pekd-train ...` have them after the program, `pekd train ...` and
    `python -m pekd train ...` after the word train."""
    program = str(argv[0]).replace("\\", "/") if argv else ""
    if program.endswith("pekd/train.py") or program.rsplit("/", 1)[-1] == "pekd-train":
        return argv[1:]
    if (program.endswith("pekd/__main__.py") or program.rsplit("/", 1)[-1] == "pekd") and argv[1:2] == ["train"]:
        return argv[2:]
    return None


def _train_command(run_dir: Path) -> str:
    """A run started by `pekd train`: that command (meta.json) with its run directory spelled out."""
    try:
        overrides = _train_overrides([str(a) for a in json.loads((run_dir / "meta.json").read_text())["argv"]])
    except (OSError, ValueError, KeyError, TypeError):
        overrides = None
    if overrides is None:
        return f"# {run_dir}: no launch record and no `pekd train` command in its meta.json; start it again the way " \
               "it was started"
    return shlex.join(["pekd", "train", *_without_run_dir(overrides), f"run_dir={run_dir}"])


def resubmit_commands(failed: list[Path], launched: dict[Path, Launch]) -> list[str]:
    """One command per submission the failed runs came from (--resume of all its failed runs with a config), one per
    run that never wrote its config, one per run started without launchers/submit.py."""
    groups: dict[Launch, list[Path]] = {}
    commands = []
    for run_dir in failed:
        launch = launched.get(run_dir)
        if launch is None:
            commands.append(_train_command(run_dir))
        else:
            groups.setdefault(Launch("", (), launch.command, launch.folder), []).append(run_dir)
    for submission, run_dirs in groups.items():
        head = ["pekd", "submit", *submit_options(submission.command, submission.folder)]
        resumable = [d for d in run_dirs if (d / "config.yaml").is_file()]
        if resumable:
            commands.append(shlex.join([*head, "--resume", *map(str, resumable)]))
        for d in run_dirs:
            if d not in resumable:
                commands.append(shlex.join([*head, *_without_run_dir(launched[d].overrides), f"run_dir={d}"]))
    return commands
