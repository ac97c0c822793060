"""The flags of `python -m pekd.train`, parsed before any heavy import: what Hydra users type, answered as Hydra would.

Hydra's `--cfg job|all|hydra` prints a composed config; pekd composes with Hydra's compose API and has no runtime
(hydra.*) config, so `job` and `all` print the same and `hydra` is refused with the reason. Everything that is not a
flag is a Hydra override, checked at composition (pekd.overrides).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pekd.errors import PekdError
from pekd.overrides import SWEEP_HINT

CFG_MODES = ("job", "all")


@dataclass
class Command:
    """What the command line asks for: help, printing the composed config, or training with these overrides."""

    help: bool = False
    show: bool = False
    overrides: list[str] = field(default_factory=list)


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
            raise PekdError(f"{arg}: `python -m pekd.train` trains one run; {SWEEP_HINT}")
        elif arg.startswith("-"):
            raise PekdError(f"unknown option {arg}; `python -m pekd.train --help` lists the options, groups and "
                            "experiments (settings are key=value overrides)")
        else:
            command.overrides.append(arg)
    return command
