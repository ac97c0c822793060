"""Build a wheelhouse for an offline node: pekd's wheel and every dependency the node does not already have.

    python3 scripts/wheelhouse.py OUT --have node.txt [--python-version 3.12] [--platform manylinux_2_28_x86_64]

Run it on a machine that reaches PyPI, with any Python that has pip (the node's Python version if you have it:
pip evaluates markers such as `python_version < "3.12"` with the Python that runs it). `node.txt` is what the
node has, one `name==version` a line, written on the node by

    python3 -m pip list --format=freeze > node.txt

(docs/install.md, "An offline compute node"). Then copy OUT to the node and install everything at once with
`pip install --no-index --find-links OUT pekd`.

How the node's packages are left out without downloading them: each line of node.txt becomes a stub wheel (its
name, its version with a `+node` local label, no files, no dependencies) that pip's resolver may use and nothing
else may satisfy. pip then resolves pekd for the node's Python and platform as if those packages were installed:
it downloads everything else, at the versions of constraints.txt (the tested set) where the node does not pin
them, and never descends into what the node's packages need (a cluster's torch comes with its own CUDA
libraries). The stubs it used are listed as "the node's own" and deleted. A conflict (say the node's numpy is
older than a tested scipy allows) stops here, on the connected machine, with pip's message; `--no-constraints`
then lets pip choose versions that fit the node.

Platforms: pip matches `--platform` tags exactly, so a wheel tagged manylinux_2_17 is not found for
manylinux_2_28 (matplotlib's are, for instance). A manylinux_2_N platform is expanded here to every older
manylinux tag that a glibc 2.N node also runs (manylinux_2_N ... manylinux_2_5, manylinux2014/2010/1).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB_LABEL = "node"
# Pure-Python projects that publish only an sdist, which `pip download --platform` cannot use: built into a
# py3-none-any wheel here first (omegaconf 2.3 pins the antlr4 runtime 4.9.*, which has no wheel on PyPI).
SDIST_ONLY = ("antlr4-python3-runtime",)
# manylinux2014/2010/1 are the older names of manylinux_2_17/2_12/2_5 (PEP 600); wheels still carry them.
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def canonical(name: str) -> str:
    """PEP 503's normalised project name: what pip compares names by."""
    return re.sub(r"[-_.]+", "-", name).lower()


def platforms(given: list[str]) -> list[str]:
    """Every platform tag a node of each given platform runs; manylinux_2_N expands down to manylinux_2_5."""
    tags: list[str] = []
    for platform in given:
        m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
        if not m:
            tags.append(platform)
            continue
        glibc, arch = int(m.group(1)), m.group(2)
        for minor in range(glibc, 4, -1):
            tags.append(f"manylinux_2_{minor}_{arch}")
            if minor in LEGACY_MANYLINUX:
                tags.append(f"{LEGACY_MANYLINUX[minor]}_{arch}")
    return list(dict.fromkeys(tags))


def read_have(path: Path) -> dict[str, tuple[str, str]]:
    """node.txt -> {canonical name: (name, version)}; anything but `name==version` is refused, naming the line."""
    have = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)", line)
        if not m:
            sys.exit(f"error: {path}:{n}: '{raw}' is not name==version; write the file on the node with "
                     "python3 -m pip list --format=freeze (pip freeze prints 'name @ url' for some packages)")
        have[canonical(m.group(1))] = (m.group(1), m.group(2))
    return have


def stub_version(version: str) -> str:
    """The node's version with a local label that no index serves, so that only the stub satisfies its pin. A
    version that has a local label already (2.11.0+cu130) is one no index serves either: it stays as it is."""
    return version if "+" in version else f"{version}+{STUB_LABEL}"


def write_stub(folder: Path, name: str, version: str) -> Path:
    """An installable-looking wheel with metadata only: enough for pip to resolve against, nothing to install."""
    dist = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: pekd-wheelhouse\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def pins(constraints: Path | None, have: dict[str, tuple[str, str]]) -> list[str]:
    """The constraints pip resolves under: the tested set for what the node lacks, the node's own for the rest."""
    lines = []
    if constraints is not None:
        for raw in constraints.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if line and canonical(re.split(r"[=<>!~ \[;]", line, maxsplit=1)[0]) not in have:
                lines.append(line)
    lines += [f"{name}=={stub_version(version)}" for name, version in have.values()]
    return lines


def pip(*args: str) -> None:
    """Run this Python's pip; its own message is the error when it fails."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{done.stdout}{done.stderr}error: pip {args[0]} failed (above)")


def build_pekd(into: Path) -> Path:
    """pekd's wheel, as `make wheel` builds it (pip fetches setuptools into an isolated build environment)."""
    with tempfile.TemporaryDirectory() as src:
        # a copy of the sources: the build writes build/ and pekd.egg-info/ beside them
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, src)
        for name in ("pekd", "configs", "launchers"):
            shutil.copytree(REPO / name, Path(src) / name, ignore=shutil.ignore_patterns("__pycache__"))
        pip("wheel", "-q", "--no-deps", "-w", str(into), src)
    [wheel] = into.glob("pekd-*.whl")
    return wheel


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the wheelhouse folder (its old wheels are replaced)")
    ap.add_argument("--have", type=Path, help="what the node has: `pip list --format=freeze` run there "
                    "(without it, every dependency goes in, torch and its CUDA libraries too)")
    ap.add_argument("--python-version", default="3.12", help="the node's Python, major.minor (default 3.12)")
    ap.add_argument("--platform", action="append", help="the node's platform tag, repeatable (default "
                    "manylinux_2_28_x86_64: torch's own minimum, so any Linux x86_64 node with torch runs it)")
    ap.add_argument("--constraints", type=Path, default=REPO / "constraints.txt",
                    help="versions for what the node lacks (default: constraints.txt, the tested set)")
    ap.add_argument("--no-constraints", action="store_true", help="let pip choose the newest versions that fit")
    ap.add_argument("--wheel", type=Path, help="pekd's wheel (default: build it from this checkout)")
    ap.add_argument("--find-links", action="append", default=[], help="passed to pip (repeatable)")
    ap.add_argument("--no-index", action="store_true", help="passed to pip: only --find-links folders")
    a = ap.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", a.python_version):
        ap.error(f"--python-version {a.python_version}: give major.minor, e.g. 3.12")
    if a.python_version != f"{sys.version_info[0]}.{sys.version_info[1]}":
        print(f"note: building for Python {a.python_version} with Python {sys.version.split()[0]}: pip evaluates "
              "dependency markers (python_version < ...) with the latter; use the node's version if you have it")
    have = read_have(a.have) if a.have else {}
    have.pop("pekd", None)  # an older pekd on the node is what this wheelhouse replaces
    index = [f"--find-links={d}" for d in a.find_links] + (["--no-index"] if a.no_index else [])
    target = ["--only-binary=:all:", "--python-version", a.python_version, "--implementation", "cp",
              *(f"--platform={p}" for p in platforms(a.platform or ["manylinux_2_28_x86_64"]))]

    with tempfile.TemporaryDirectory() as tmp:
        stubs, built, got = Path(tmp, "stubs"), Path(tmp, "built"), Path(tmp, "got")
        for d in (stubs, built, got):
            d.mkdir()
        stub_files = {write_stub(stubs, name, stub_version(v)).name for name, v in have.values()}
        constraints = Path(tmp, "constraints.txt")
        constraints.write_text("\n".join(pins(None if a.no_constraints else a.constraints, have)) + "\n")
        wheel = a.wheel or build_pekd(built)
        for name in SDIST_ONLY:
            if name not in have:
                pin = next((p for p in constraints.read_text().split() if canonical(p.split("==")[0]) == name),
                           name)
                pip("wheel", "-q", "--no-deps", *index, "-w", str(built), pin)
        for path in built.glob("*.whl"):
            if not path.name.endswith("-py3-none-any.whl"):
                sys.exit(f"error: {path.name} is not pure Python: it would not install on the node")
        pip("download", "-q", "-d", str(got), *target, *index, f"--find-links={stubs}", f"--find-links={built}",
            "-c", str(constraints), str(wheel))
        used = sorted(p.name for p in got.iterdir() if p.name in stub_files)
        for name in used:
            (got / name).unlink()
        a.out.mkdir(parents=True, exist_ok=True)
        for old in a.out.glob("*.whl"):
            old.unlink()
        for new in sorted(got.iterdir()):
            shutil.copy(new, a.out / new.name)

    wheels = sorted(a.out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"wheelhouse {a.out}: {len(wheels)} wheels, {size / 2**20:.1f} MiB, for Python {a.python_version}")
    for w in wheels:
        print(f"  {w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    node_own = [n.split("-")[0] + " " + n.split("-")[1].removesuffix(f"+{STUB_LABEL}") for n in used]
    print(f"the node's own (left out): {', '.join(node_own) or 'nothing'}")
    print(f"on the node: pip install --no-index --find-links {a.out} pekd")


if __name__ == "__main__":
    main()
