"""Installing pekd as users do: a built (non-editable) wheel carries its configs and console scripts and trains from
any folder, a user's own experiment folder joins pekd's configs, and a pipeline whose extra is missing is one
error naming the extra."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

import pekd
from pekd.config_dirs import CONFIG_PATH_ENV
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
    """pekd's wheel, built from a copy of the checkout (the build writes build/ beside its sources)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("pekd", "configs", "launchers"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("pekd-*.whl")
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
    where = subprocess.run([sys.executable, "-c", "import pekd.config_dirs as c; print(c.__file__, c.config_dir())"],
                           env=env, cwd=work, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(site / "pekd" / "config_dirs.py"), str(site / "pekd" / "configs")]
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
