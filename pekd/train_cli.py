"""`pekd train` (`pekd-train`, `python -m pekd train`): the command line of one training run, parsed before any
heavy import -- what Hydra users type, answered as Hydra would, or with a pointer to pekd's equivalent.

Hydra's `--cfg job|all|hydra` prints a composed config; pekd composes with Hydra's compose API and has no runtime
(hydra.*) config, so `job` and `all` print the same, resolved (`${oc.env:...}` as this shell gives it, which is
what the run will use), and `hydra` is refused with the reason. Hydra's other flags pick config folders and files,
which pekd does with PEKD_CONFIG_DIR, PEKD_CONFIG_PATH and experiment=NAME: each is refused naming those.
Everything that is not a flag is a Hydra override, checked before composition (pekd.config.overrides).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from pekd.config.overrides import SWEEP_HINT
from pekd.errors import PekdError, user_errors_exit

CFG_MODES = ("job", "all")
_FOLDERS = ("pekd's config folder is set by PEKD_CONFIG_DIR (a replacement for all of pekd's configs) and folders "
            "of your own are added by PEKD_CONFIG_PATH (searched after pekd's), e.g. PEKD_CONFIG_PATH=DIR pekd train "
            "experiment=NAME for DIR/experiment/NAME.yaml")
# Hydra's own flags (long and short forms) -> pekd's way to do what each does.
HYDRA_FLAGS = {
    ("--config-dir", "-cd", "--config-path", "-cp"): _FOLDERS,
    ("--config-name", "-cn"): ("pekd always composes its config.yaml; a whole recipe is experiment=NAME "
                               "(`pekd train --help` lists them), and " + _FOLDERS),
    ("--info", "-i"): ("`pekd train --help` lists the experiments, config groups and their options, "
                       "and `pekd train --cfg job` prints the composed config"),
    ("--shell-completion", "-sc"): ("pekd has no shell completion; `pekd train --help` lists every experiment, "
                                    "group and option"),
    ("--hydra-help",): "`pekd train --help` is the whole help (options, groups, environment)",
    ("--resolve",): "`pekd train --cfg job` prints the config resolved already",
    ("--package", "-p"): "`pekd train --cfg job` prints the whole config (pekd has no config packages)",
    ("--run", "-r"): "`pekd train` always trains one run: drop the flag",
    ("--experimental-rerun",): "type the same command again: it resumes the run in its run directory",
    ("--version",): "`pekd --version` prints pekd's version",
}


@dataclass
class Command:
    """What the command line asks for: help, printing the composed config, or training with these overrides."""

    help: bool = False
    show: bool = False
    overrides: list[str] = field(default_factory=list)


def hydra_flag(arg: str) -> PekdError | None:
    """The error for one of Hydra's own flags (None for anything else)."""
    flag = arg.partition("=")[0]
    for flags, instead in HYDRA_FLAGS.items():
        if flag in flags:
            return PekdError(f"{flag} is Hydra's flag, which pekd does not take: {instead}")
    return None


def parse_command_line(args: list[str]) -> Command:
    """Split flags from overrides; an unsupported flag is one PekdError naming what to type instead."""
    command = Command()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help"):
            command.help = True
        elif arg in ("--cfg", "-c") or arg.startswith("--cfg="):
            if "=" in arg:
                mode = arg.partition("=")[2]
            elif i < len(args) and "=" not in args[i] and not args[i].startswith("-"):
                mode, i = args[i], i + 1
            else:  # `--cfg key=value ...`, as pekd accepted before it took Hydra's modes
                mode = "job"
            if mode == "hydra":
                raise PekdError("--cfg hydra: pekd has no Hydra runtime config (hydra.*); `--cfg job` prints the "
                                "whole run config, whose run_dir is where the run writes")
            if mode not in CFG_MODES:
                raise PekdError(f"--cfg {mode}: choose one of {list(CFG_MODES)} (both print the composed config)")
            command.show = True
        elif arg in ("-m", "--multirun"):
            raise PekdError(f"{arg}: `pekd train` trains one run; {SWEEP_HINT}")
        elif (error := hydra_flag(arg)) is not None:
            raise error
        elif arg.startswith("-"):
            raise PekdError(f"unknown option {arg}; `pekd train --help` lists the options, groups and experiments "
                            "(settings are key=value overrides)")
        else:
            command.overrides.append(arg)
    return command


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    """Train one run; a preempted run exits with status 3 after checkpointing (the same command resumes it)."""
    command = parse_command_line(list(sys.argv[1:] if argv is None else argv))
    if command.help:
        from pekd.config.dirs import config_dir, user_config_dirs
        from pekd.config.help import help_text

        print(help_text([config_dir(), *user_config_dirs()]))
        return
    from omegaconf import OmegaConf

    from pekd import train

    cfg = train.compose_config(command.overrides)
    if command.show:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return
    from pekd.engine.distributed import shutdown

    try:
        results = train.run(cfg)
    finally:  # an error must not leave the process group to the interpreter's exit (NCCL warns, or hangs)
        shutdown()
    if results["status"] == "preempted":
        sys.exit(3)
