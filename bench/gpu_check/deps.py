"""`python -m bench.gpu_check.deps SITE`: make pekd's dependencies importable on a node that has only its own torch.

A compute node's Python comes with torch and the scientific stack but not hydra-core, omegaconf or submitit, and
cannot reach an index. bench/wheelhouse/ (scripts/make_wheelhouse.sh) travels with the repository; this installs
from it, with `pip install --no-index --no-deps --target SITE`, exactly the distributions this Python lacks --
never a second copy of one it has, which would shadow the node's own on PYTHONPATH. Then every requirement in
pyproject.toml's [project] dependencies is checked against what is importable with SITE on the path: a missing
package or a version below pekd's tested lower bound is a FAIL naming it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.gpu_check.common import FAIL, PASS, run_step

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / "bench" / "wheelhouse"


def dist_name(wheel: Path) -> str:
    """hydra_core-1.3.8-py3-none-any.whl -> hydra-core (a wheel's file name spells the project's name with _)."""
    return wheel.name.split("-")[0].replace("_", "-").lower()


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def unmet_requirements(site: Path) -> tuple[list[str], dict[str, str]]:
    """pyproject's dependencies that a Python with `site` on its path does not satisfy, and the versions found.
    Asked of a fresh interpreter: this one imported its metadata before `site` existed."""
    script = (
        "import importlib.metadata as md, json, sys, tomllib\n"
        "from packaging.requirements import Requirement\n"
        "deps = tomllib.load(open(sys.argv[1], 'rb'))['project']['dependencies']\n"
        "found, bad = {}, []\n"
        "for d in map(Requirement, deps):\n"
        "    try:\n"
        "        v = found[d.name] = md.version(d.name)\n"
        "    except md.PackageNotFoundError:\n"
        "        bad.append(f'{d} (absent)'); continue\n"
        "    if not d.specifier.contains(v, prereleases=True):\n"
        "        bad.append(f'{d} (found {v})')\n"
        "print(json.dumps([bad, found]))\n")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", script, str(REPO / "pyproject.toml")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": path}, check=True)
    bad, found = json.loads(done.stdout)
    return bad, found


def main() -> tuple[str, str, dict[str, Any]]:
    site = Path(sys.argv[1])
    wheels = sorted(WHEELHOUSE.glob("*.whl"))
    if not wheels:
        return FAIL, f"no wheels in {WHEELHOUSE}: run scripts/make_wheelhouse.sh on a connected machine", {}
    missing = [w for w in wheels if installed(dist_name(w)) is None]
    has = {dist_name(w): installed(dist_name(w)) for w in wheels if w not in missing}
    if missing:
        site.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--upgrade", "--target", str(site), *map(str, missing)],
                       check=True)
    names = [w.name.removesuffix("-py3-none-any.whl") for w in missing]
    bad, found = unmet_requirements(site)
    figure = (f"from the wheelhouse: {', '.join(names) or 'nothing'}; the node's own: "
              f"{', '.join(f'{k} {v}' for k, v in has.items()) or 'none of them'}")
    details = {"installed": names, "node_had": has, "pekd_requirements": found}
    if bad:
        return FAIL, f"pyproject.toml's requirements not met: {'; '.join(bad)} ({figure})", details
    return PASS, figure, details


if __name__ == "__main__":
    run_step("deps", main)
