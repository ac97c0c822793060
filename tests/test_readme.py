"""The README's quick commands run as written, and its links lead somewhere.

Only the cheap commands run here (printing help and composed configs: no data, no training); `make demo` and
`make test` are the suite and the demo themselves. Which commands count as quick is decided by what they are
(`--help`, `--cfg`), and the test fails if the README stops showing them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from tests.train_helpers import REPO

README = (REPO / "README.md").read_text()


def _commands() -> list[str]:
    """Every command of the README's bash blocks, continuation lines joined and trailing comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_the_quick_commands_run_as_written() -> None:
    quick = [c for c in _commands() if c.startswith("python -m pekd.train") and ("--help" in c or "--cfg" in c)]
    assert len(quick) >= 2, quick  # --help and --cfg job are the README's first steps after make
    for command in quick:
        argv = [sys.executable, *shlex.split(command)[1:]]
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (command, out.stderr[-2000:])
        assert out.stdout.strip(), command
        if "--cfg" in command:
            assert "run_dir: " in out.stdout and "model:" in out.stdout
        else:
            assert "experiments" in out.stdout and "PEKD_DATA" in out.stdout


def test_the_make_targets_it_leads_with_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert _commands()[:2] == ["make demo", "make test"]
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)


def test_every_relative_link_resolves() -> None:
    targets = re.findall(r"\]\(([^)#]+)\)", README)
    local = [t for t in targets if not re.match(r"^[a-z]+://", t)]
    assert local
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
