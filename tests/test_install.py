"""Installing pekd as users do: a built (non-editable) wheel carries its configs and console scripts and trains from
any folder, a user's own experiment folder joins pekd's configs, and a pipeline whose extra is missing is one
error naming the extra."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

import pekd
from pekd.config.dirs import CONFIG_PATH_ENV
from pekd.errors import PekdError
from pekd.train import compose_config
from pekd.train import main as train_main
from pekd.write_dataset import main as write_dataset_main
from tests.train_helpers import REPO, TINY, env_for

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

USER_EXPERIMENT = """# @package _global_
defaults:
  - override /data: digits
  - override /model: resnet8
  - override /teacher: none
method:
  name: ce
trainer:
  epochs: 1
  max_steps: 2
name: my_digits
"""


def test_every_package_and_config_folder_is_in_the_wheel_list():
    """pyproject lists packages by hand (package-dir cannot map configs/ into a discovered package): a new
    subpackage or config group left out of the list would be missing from every wheel."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "pekd").rglob("__init__.py")}
    on_disk |= {"pekd.configs", "pekd.launchers"}  # mapped from the checkout's top-level configs/ and launchers/
    on_disk |= {f"pekd.configs.{d.name}" for d in (REPO / "configs").iterdir() if d.is_dir()}
    assert listed == on_disk


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pekd's wheel, built by `make wheel` in a copy of the checkout (the build writes build/ beside its sources)
    that has no .venv: the target needs no set-up, only a Python with pip (this one has setuptools, so pip builds
    without fetching it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("pekd", "configs", "launchers"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(["make", "wheel"], cwd=src, env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (src / ".venv").exists() and not (src / "build").exists()
    [built] = (src / "dist").glob("pekd-*.whl")
    return built


def test_the_wheel_has_one_version_its_configs_and_console_scripts(wheel):
    assert wheel.name == f"pekd-{pekd.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        scripts = z.read(f"pekd-{pekd.__version__}.dist-info/entry_points.txt").decode()
    shipped = {n.removeprefix("pekd/configs/") for n in names if n.startswith("pekd/configs/")}
    assert shipped == {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")}
    assert {"pekd/py.typed", "pekd/launchers/__init__.py", "pekd/launchers/submit.py"} <= names
    for script in ("pekd-train", "pekd-precompute", "pekd-report", "pekd-submit"):
        assert f"{script} = " in scripts


def test_a_wheel_install_trains_from_another_folder_with_a_user_experiment(wheel, tmp_path):
    """The wheel installed on its own (not editable) into a folder, its console script run from a folder that is
    not the checkout, on an experiment that lives in the user's PEKD_CONFIG_PATH folder (~20 s)."""
    site, work, mine = tmp_path / "site", tmp_path / "work", tmp_path / "my_configs"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "my_digits.yaml").write_text(USER_EXPERIMENT)
    work.mkdir()
    env = env_for(0, 1, 0) | {"PYTHONPATH": str(site), CONFIG_PATH_ENV: str(mine)}
    env.pop("PEKD_CONFIG_DIR", None)
    where = subprocess.run([sys.executable, "-c", "import pekd.config.dirs as c; print(c.__file__, c.config_dir())"],
                           env=env, cwd=work, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(site / "pekd" / "config" / "dirs.py"), str(site / "pekd" / "configs")]
    p = subprocess.run([str(site / "bin" / "pekd-train"), "experiment=my_digits", *TINY, "run_dir=run"], env=env,
                       cwd=work, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads((work / "run" / "results.json").read_text())
    assert results["status"] == "stopped" and results["global_step"] == 2


def test_a_user_config_folder_adds_experiments_and_a_missing_one_is_named(monkeypatch, tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "my_digits.yaml").write_text(USER_EXPERIMENT)
    monkeypatch.setenv(CONFIG_PATH_ENV, os.pathsep.join(["", str(tmp_path)]))
    cfg = compose_config(["experiment=my_digits", "experiment=my_digits", "run_dir=x"])
    assert (cfg.name, cfg.data.source, cfg.method.name, cfg.trainer.max_steps) == ("my_digits", "digits", "ce", 2)
    assert compose_config(["experiment=cifar100_r56_r20", "run_dir=x"]).model.name == "resnet20"  # pekd's own
    monkeypatch.setenv(CONFIG_PATH_ENV, str(tmp_path / "absent"))
    with pytest.raises(PekdError, match=f"{CONFIG_PATH_ENV} names '.*absent', which is not a folder"):
        compose_config(["run_dir=x"])


TRAIN = ["data=digits", "model=resnet8", "teacher=none", "method=ce", "run_dir=run"]


@pytest.mark.parametrize("module, entry, args", [
    ("ffcv", train_main, [*TRAIN, "data.pipeline=ffcv", "data.train_beton=t.beton"]),
    ("nvidia.dali", train_main, [*TRAIN, "data.pipeline=dali"]),
    ("ffcv", write_dataset_main, ["--source", "digits", "--out", "t.beton"]),
])
def test_a_pipeline_whose_extra_is_missing_is_one_error_naming_it(monkeypatch, tmp_path, capsys, module, entry,
                                                                  args):
    """The package is made unimportable the way Python documents (a None entry in sys.modules), as on a machine
    that installed pekd without the extra; the error comes before any run directory or file is written."""
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        entry(args)
    assert e.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    pipeline = "ffcv" if module == "ffcv" else "dali"
    extra = pipeline if module == "ffcv" else "dali-cu12" if (torch.version.cuda or "").startswith("12.") else \
        "dali-cu13"
    assert line.startswith(f"error: data.pipeline={pipeline} needs the {module} package, which cannot be imported")
    assert f"pip install 'pekd[{extra}]'" in line
    assert list(tmp_path.iterdir()) == []


# What bench/wheelhouse carries (scripts/make_wheelhouse.sh): pekd's requirements a GPU node's image may lack.
CARRIED = {"hydra-core", "omegaconf", "antlr4-python3-runtime", "packaging", "pyyaml", "submitit", "cloudpickle",
           "tqdm", "safetensors"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_a_wheelhouse_holds_pekd_and_exactly_what_the_node_lacks(wheel, tmp_path):
    """scripts/wheelhouse.py for a Python 3.12 node that has everything of this environment but bench/wheelhouse's
    packages, resolved offline over bench/wheelhouse: pekd's wheel and those packages go in -- PyYAML as its cp312
    build, safetensors through a manylinux2014 tag that only the expansion of manylinux_2_28 finds -- and nothing
    the node has (~15 s)."""
    node = [f"{d.name}=={d.version}" for d in md.distributions() if canonical(d.name) not in CARRIED]
    (tmp_path / "node.txt").write_text("\n".join(node) + "\n")
    out = tmp_path / "wheelhouse"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "wheelhouse.py"), str(out), "--have",
                           str(tmp_path / "node.txt"), "--python-version", "3.12", "--wheel", str(wheel),
                           "--no-index", "--find-links", str(REPO / "bench" / "wheelhouse")],
                          env={**os.environ, "PIP_CONFIG_FILE": os.devnull}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    got = {canonical(w.name.split("-")[0]): w.name for w in out.glob("*.whl")}
    assert set(got) == CARRIED | {"pekd"}
    assert "-cp312-cp312-" in got["pyyaml"] and got["pekd"] == wheel.name
    assert "on the node: pip install --no-index --find-links" in done.stdout


def torch_only_python(folder: Path, *extra: str) -> Path:
    """A Python that has torch, torchvision (with what they need), pip and `extra` and nothing else: a venv made
    without --system-site-packages whose one .pth names a folder of links to those distributions in this
    environment -- a real install of torch, as on a GPU node, without copying its 5 GB."""
    from packaging.requirements import Requirement

    links, venv = folder / "links", folder / "node"
    links.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    queue, seen = ["torch", "torchvision", "pip", *extra], set()
    while queue:
        name = canonical(queue.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = md.distribution(name)
        queue += [r.name for r in map(Requirement, dist.requires or [])
                  if r.marker is None or r.marker.evaluate({"extra": ""})]
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if (site / top).exists() and not (links / top).exists():
                (links / top).symlink_to(site / top)
    [site_packages] = venv.glob("lib/python3*/site-packages")
    (site_packages / "node.pth").write_text(f"{links}\n")
    return venv / "bin" / "python"


@pytest.mark.parametrize("node_has, absent", [
    ((), ["tensorboard>=2.17.1", "scikit-learn>=1.5", "scipy>=1.14", "matplotlib>=3.9"]),
    (("tensorboard", "scikit-learn", "scipy", "matplotlib"), []),
])
def test_the_gpu_checks_deps_row_installs_what_the_node_lacks_and_names_what_no_wheelhouse_has(tmp_path, node_has,
                                                                                                absent):
    """bench/gpu_check.sh's first step on a node with only torch and torchvision (+ `node_has`): it installs
    hydra-core, omegaconf, PyYAML, packaging, ... from bench/wheelhouse -- after which they import there -- and
    names at once every requirement that neither the node nor the wheelhouse has, for the steps after it to be
    NOT CHECKED (~20 s each)."""
    python = torch_only_python(tmp_path, *node_has)
    site, work = tmp_path / "site", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPU_CHECK_RESULTS": str(tmp_path / "results"),
           "GPU_CHECK_WORK": str(work), "PIP_CONFIG_FILE": os.devnull}
    env.pop("GPU_CHECK_WHEELHOUSE", None)
    done = subprocess.run([str(python), "-m", "bench.gpu_check.deps", str(site)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    row = json.loads((tmp_path / "results" / "deps.json").read_text())
    assert (done.returncode, row["status"]) == ((1, "FAIL") if absent else (0, "PASS")), done.stdout + done.stderr
    assert row["details"]["absent"] == absent
    assert (work / "deps" / "absent").read_text().split() == absent
    assert all(f"{a}," in row["figure"] or f"{a}." in row["figure"] for a in absent)
    installed = {canonical(n.split()[0]) for n in row["details"]["installed"]}
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "pyyaml", "submitit"} <= installed
    assert installed <= CARRIED and not installed & set(row["details"]["node_had"])
    probe = "import hydra, omegaconf, yaml, packaging, submitit; print(yaml.__file__)"
    where = subprocess.run([str(python), "-c", probe], env={**env, "PYTHONPATH": str(site)}, capture_output=True,
                           text=True, timeout=120)
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where.stderr


def test_the_gpu_checks_table_names_torch_when_no_preflight_ran(tmp_path):
    """The header of the summary table reads torch's version from its metadata when the preflight recorded no
    environment (it did not run, or it failed), instead of printing `torch None` and 'no CUDA device'."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "deps.json").write_text(json.dumps({"check": "deps", "status": "FAIL", "figure": "x", "details": {}}))
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check.summary", str(results), str(tmp_path / "o.json"),
                           str(tmp_path / "phases"), "deps"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    header = next(line for line in done.stdout.splitlines() if line.startswith("## pekd GPU check"))
    assert f"GPU not read (the preflight recorded no environment), torch {md.version('torch')}," in header
