"""`pekd <command>` and `python -m pekd <command>`: every command behind one name that exists in a checkout and in a
wheel install, dispatched without importing the other commands (so `pekd --help` answers at once), and the
pekd-<command> console scripts kept as aliases of the same functions.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import time
import tomllib

import pytest

import pekd.cli
from tests.train_helpers import REPO

HEAVY = ("torch", "hydra", "pekd.train", "pekd.report", "pekd.train_cli")


def _probe(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`python -m pekd ARGV` in a fresh interpreter, and the heavy modules it imported (its last output line)."""
    code = (f"import runpy, sys; sys.argv = ['pekd', *{argv!r}]\ntry:\n    runpy.run_module('pekd', "
            "run_name='__main__')\nfinally:\n    print('imported:', *sorted(m for m in sys.modules if m in "
            f"{HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    return out, out.stdout.splitlines()[-1].split()[1:]


def test_help_lists_every_command_and_imports_none_of_them() -> None:
    out, imported = _probe(["--help"])
    assert out.returncode == 0, out.stderr
    usage = out.stdout
    assert imported == []
    for command in ("train", "submit", "report", "analyze", "evaluate", "precompute", "demo", "study",
                    "write-dataset"):
        assert f"\n  {command} " in usage
    assert ("\n  status " in usage) == (importlib.util.find_spec("pekd.cluster.status") is not None)


def test_python_m_pekd_help_is_fast() -> None:
    """The dispatcher imports nothing heavy: startup is Python's own (~0.05 s idle); 3 s allows a loaded machine."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pekd", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and time.perf_counter() - start < 3, out.stderr


def test_a_command_imports_only_its_own_module() -> None:
    out, imported = _probe(["train", "--help"])
    assert out.returncode == 0, out.stderr
    assert "usage: pekd train" in out.stdout
    assert imported == ["pekd.train_cli"]  # not torch, not pekd.train


@pytest.mark.parametrize(("argv", "needles"), [
    ([], ["pekd needs a command", "train", "pekd --help"]),
    (["trian"], ["pekd trian: no such command (did you mean train?)"]),
    (["frobnicate"], ["no such command", "choose one of train, submit"]),
    (["--cfg", "job"], ["unknown option --cfg", "give a command first"]),
])
def test_a_wrong_command_is_one_error_line(argv: list[str], needles: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "pekd", *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and out.stdout == "" and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0]


def test_every_command_resolves_to_a_function() -> None:
    """Each command's module imports (submit from pekd.launchers, the name a wheel and an editable install give
    launchers/) and has the function the dispatcher calls."""
    for command in pekd.cli.COMMANDS:
        if command == "status" and importlib.util.find_spec("pekd.cluster.status") is None:
            continue
        assert callable(pekd.cli.entry_point(command)), command


def test_pekd_submit_exits_0_after_a_dry_run(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no SLURM: the dry run previews the script
    with pytest.raises(SystemExit) as exit_info:
        pekd.cli.main(["submit", "--dry-run", "--gpus", "0", "--folder", str(tmp_path / "runs"),
                       "data=digits", "model=resnet8", "method=ce", "teacher=none"])
    out = capsys.readouterr()
    assert exit_info.value.code is None, out.err
    assert "#!/bin/bash" in out.out and "[]" not in out.out + out.err


def test_console_scripts_are_aliases_of_pekd_commands() -> None:
    """pyproject's pekd-<command> scripts call the very function `pekd <command>` calls (submit's console wrapper,
    which exits 0 where main returns its jobs), and `pekd` itself is the dispatcher."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.pop("pekd") == "pekd.cli:main"
    for script, target in scripts.items():
        command = script.removeprefix("pekd-")
        assert target == pekd.cli.COMMANDS[command][0][0], script
        assert callable(pekd.cli.entry_point(command)), script
