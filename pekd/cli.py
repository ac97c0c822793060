"""`pekd <command> [args ...]` (or `python -m pekd ...`): one front door for every pekd command.

A wheel install has no `launchers/submit.py` to type and a checkout's users typed `python -m pekd.<module>`:
`pekd <command>` is the one spelling that exists in both, so messages and documentation can name it. Only the
chosen command's module is imported (torch alone takes seconds to import), so `pekd --help` and
`pekd train --help` answer at once. The `pekd-<command>` console scripts stay as aliases of the same functions.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from pekd import __version__
from pekd.errors import PekdError, user_errors_exit

# command -> (its function as "module:function", in the places to try in order; what it does). The function is the
# one its pekd-<command> console script calls, and is called the same way: sys.exit(function(argv)). `submit` lives
# in launchers/, which a wheel (and an editable install) carries as pekd.launchers; a plain checkout on PYTHONPATH
# has it as launchers.
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("pekd.train_cli:main",), "train one run: Hydra overrides, --help lists experiments and groups"),
    "submit": (("pekd.launchers.submit:console", "launchers.submit:console"),
               "submit runs or sweeps to SLURM (or --local: this machine), one run directory each"),
    "status": (("pekd.cluster.status:main",), "where every run of a folder, sweep or study stands"),
    "report": (("pekd.report.cli:main",), "mean and 95% CI per configuration, paired comparisons, verdicts"),
    "analyze": (("pekd.analyze:main",), "what distillation did to a run: CKA, calibration, projector diagnostics"),
    "evaluate": (("pekd.evaluate:main",), "top-1/top-5 of a run's exported student"),
    "precompute": (("pekd.precompute:main",), "write a teacher feature bank (teacher.mode=bank)"),
    "write-dataset": (("pekd.write_dataset:main",), "write a source to an FFCV .beton (data.pipeline=ffcv)"),
    "demo": (("pekd.demo:main",), "the paper's two claims on Fashion-MNIST, paired by seed (about ten minutes)"),
    "study": (("pekd.study:main",), "the claims along the training budget on Fashion-MNIST"),
}


def _available() -> dict[str, tuple[tuple[str, ...], str]]:
    """The commands this install has: `status` only once its module exists (it is filled in separately)."""
    return {name: (targets, about) for name, (targets, about) in COMMANDS.items()
            if name != "status" or importlib.util.find_spec(targets[0].partition(":")[0]) is not None}


def usage() -> str:
    """`pekd --help`: every command with one line on what it does."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: pekd <command> [args ...]    (also: python -m pekd <command> ...; pekd {__version__})", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {about}" for name, (_, about) in _available().items()]
    lines += ["", "`pekd <command> --help` describes a command; the pekd-<command> scripts (pekd-train, pekd-submit, "
              "...)", "are the same commands. Documentation: README.md and docs/ (docs/install.md lists the commands)."]
    return "\n".join(lines)


def _load(target: str) -> Callable[[list[str]], Any]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


def entry_point(command: str) -> Callable[[list[str]], Any]:
    """The function of a command, importing its module (and nothing else's) now."""
    commands = _available()
    if command not in commands:
        near = difflib.get_close_matches(command, list(commands), n=1, cutoff=0.5)
        hint = f"did you mean {near[0]}?" if near else f"choose one of {', '.join(commands)}"
        raise PekdError(f"pekd {command}: no such command ({hint}); `pekd --help` lists them")
    *elsewhere, last = commands[command][0]
    for target in elsewhere:
        try:
            return _load(target)
        except ModuleNotFoundError as e:  # only the module itself missing moves on to the next place to look
            if e.name is None or not target.startswith(e.name):
                raise
    return _load(last)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    """Run the command as its console script would: its exit status is what the function returns (None: 0) or
    exits with."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        raise PekdError(f"pekd needs a command: {', '.join(_available())}; `pekd --help` says what each does")
    if args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if args[0] == "--version":
        print(f"pekd {__version__}")
        return
    if args[0].startswith("-"):
        raise PekdError(f"unknown option {args[0]}; give a command first (`pekd --help` lists them), then its "
                        "options")
    sys.exit(entry_point(args[0])(args[1:]))
