"""`python -m bench.gpu_check.deps SITE`: make pekd's dependencies importable on a node that has only its own torch.

A compute node's Python comes with torch (and usually the scientific stack) but not hydra-core, omegaconf or
submitit, and cannot reach an index. bench/wheelhouse/ (scripts/make_wheelhouse.sh) travels with the repository,
and GPU_CHECK_WHEELHOUSE names more folders (a wheelhouse scripts/wheelhouse.py built for a node that lacks more).
This walks pyproject.toml's dependencies the way pip would: a requirement the node meets stays the node's own;
one it lacks comes from the newest wheel of the wheelhouses that this Python can install and that satisfies it,
and that wheel's own requirements are walked in turn. The chosen wheels install with `pip install --no-index
--no-deps --target SITE` -- never a second copy of what the node has, which would shadow the node's own on
PYTHONPATH. The row FAILs naming every requirement that is absent from both the node and the wheelhouses (all of
them at once, not pip's one per attempt) or older than pekd's lower bound; the absent ones are also written to
<work>/deps/absent, so bench/gpu_check.sh reports the steps that would only fail on an import as NOT CHECKED.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from bench.gpu_check.common import FAIL, PASS, run_step, work_dir

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / "bench" / "wheelhouse"
# What the node has is looked up on this path: sys.path before use_packaging() may add a wheel to it.
NODE_PATH = list(sys.path)


def wheelhouses() -> list[Path]:
    """bench/wheelhouse, then GPU_CHECK_WHEELHOUSE's folders (separated by os.pathsep)."""
    extra = [Path(p) for p in os.environ.get("GPU_CHECK_WHEELHOUSE", "").split(os.pathsep) if p]
    return [WHEELHOUSE, *extra]


def use_packaging() -> None:
    """Make `packaging` importable: the node's own, else straight from its pure wheel in bench/wheelhouse (a pure
    wheel is a zip that zipimport reads). This step runs before anything is installed, and a node that lacks
    PyYAML and packaging is one this step exists for."""
    try:
        import packaging.requirements  # noqa: F401
    except ImportError:
        wheels = sorted(WHEELHOUSE.glob("packaging-*-py3-none-any.whl"))
        if not wheels:
            raise RuntimeError(f"this Python has no `packaging` and {WHEELHOUSE} carries none: run "
                               "scripts/make_wheelhouse.sh on a connected machine") from None
        sys.path.insert(0, str(wheels[-1]))


def node_version(name: str) -> str | None:
    """The version of `name` this Python has of its own, or None."""
    found = next(iter(md.Distribution.discover(name=name, path=NODE_PATH)), None)
    return found.version if found else None


def requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def installable() -> dict[str, list[tuple[Any, Path]]]:
    """{canonical name: [(version, wheel)]} over the wheelhouses, for the wheels this Python can install."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    found: dict[str, list[tuple[Any, Path]]] = {}
    for folder in wheelhouses():
        for wheel in sorted(folder.glob("*.whl")):
            name, version, _, tags = parse_wheel_filename(wheel.name)
            if tags & supported:
                found.setdefault(name, []).append((version, wheel))
    return found


def requires_dist(wheel: Path) -> list[str]:
    """A wheel's Requires-Dist lines, read from its METADATA."""
    with zipfile.ZipFile(wheel) as z:
        [meta] = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.split("\n\n", 1)[0].splitlines()
            if line.startswith("Requires-Dist:")]


def plan(reqs: list[str]) -> tuple[dict[str, tuple[Any, Path]], list[str], list[str], dict[str, str]]:
    """What to install from the wheelhouses ({name: (version, wheel)}), the requirements absent from node and
    wheelhouses alike, those the node meets with too old a version, and the node's own versions of them."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wheels = installable()
    install: dict[str, tuple[Any, Path]] = {}
    absent: list[str] = []
    too_old: list[str] = []
    node: dict[str, str] = {}
    queue = [Requirement(r) for r in reqs]
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if (req.marker and not req.marker.evaluate({"extra": ""})) or name in install or name in node:
            continue
        version = node_version(name)
        if version is not None:
            node[name] = version
            if not req.specifier.contains(version, prereleases=True):
                too_old.append(f"{req} (found {version})")
            continue
        fits = [(v, w) for v, w in wheels.get(name, []) if req.specifier.contains(v, prereleases=True)]
        if not fits:
            absent.append(str(req))
            continue
        install[name] = max(fits)
        queue += [Requirement(r) for r in requires_dist(install[name][1])]
    return install, absent, too_old, node


def unmet_requirements(site: Path) -> tuple[list[str], dict[str, str]]:
    """pyproject's dependencies that a Python with `site` on its path does not satisfy, and the versions found --
    asked of a fresh interpreter, which sees SITE as every later step will."""
    script = (
        "import importlib.metadata as md, json\n"
        "from bench.gpu_check.deps import requirements, use_packaging\n"
        "use_packaging()\n"
        "from packaging.requirements import Requirement\n"
        "found, bad = {}, []\n"
        "for d in map(Requirement, requirements()):\n"
        "    try:\n"
        "        v = found[d.name] = md.version(d.name)\n"
        "    except md.PackageNotFoundError:\n"
        "        bad.append(f'{d} (absent)'); continue\n"
        "    if not d.specifier.contains(v, prereleases=True):\n"
        "        bad.append(f'{d} (found {v})')\n"
        "print(json.dumps([bad, found]))\n")
    path = os.pathsep.join(filter(None, [str(REPO), str(site), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    if done.returncode:
        return [f"checking them failed: {last_line(done.stderr)}"], {}
    bad, found = json.loads(done.stdout)
    return bad, found


def last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else "(no output)"


def main() -> tuple[str, str, dict[str, Any]]:
    site = Path(sys.argv[1])
    use_packaging()
    from packaging.tags import sys_tags

    install, absent, too_old, node = plan(requirements())
    (work_dir("deps") / "absent").write_text("\n".join(absent))
    names = [f"{name} {version}" for name, (version, _) in install.items()]
    if install:
        site.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--no-compile", "--disable-pip-version-check", "--upgrade", "--target", str(site),
                               *(str(w) for _, w in install.values())], capture_output=True, text=True)
        print(done.stdout + done.stderr)
        if done.returncode:
            return FAIL, f"pip could not install {', '.join(names)} from the wheelhouse: {last_line(done.stderr)}", \
                {"installing": names}
    bad, found = unmet_requirements(site) if not absent else ([], {})
    details = {"installed": names, "node_had": node, "absent": absent, "too_old": too_old,
               "pekd_requirements": found, "wheelhouses": [str(w) for w in wheelhouses()]}
    figure = (f"from the wheelhouse: {', '.join(names) or 'nothing'}; the node's own: "
              f"{', '.join(f'{k} {v}' for k, v in node.items()) or 'none of them'}")
    if absent:
        tag = next(iter(sys_tags()))
        return FAIL, (f"absent here and from the wheelhouses for this Python ({tag.interpreter}, {tag.platform}): "
                      f"{', '.join(absent)}{'; older than pekd needs: ' + ', '.join(too_old) if too_old else ''}. "
                      "Build a wheelhouse for this node with scripts/wheelhouse.py --have (docs/gpu_check.md) "
                      f"and give it as GPU_CHECK_WHEELHOUSE ({figure})"), details
    if too_old or bad:
        return FAIL, f"pyproject.toml's requirements not met: {'; '.join(too_old or bad)} ({figure})", details
    return PASS, figure, details


if __name__ == "__main__":
    run_step("deps", main)
