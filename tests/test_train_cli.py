"""`python -m pekd.train` as a Hydra user drives it: --help, --cfg job|all, and the overrides Hydra would let pass.

The composition cases run in-process through `pekd.train.main` (with training replaced by a failure); --help runs
as a real process, which must answer without importing torch (that import alone is 3-5 s here, the reason
`--help` used to take 4-13 s).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pekd.train
from pekd.models.registry import MODEL_NAMES
from tests.train_helpers import REPO


def main(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    def must_not_train(cfg: object) -> None:
        pytest.fail("the command line reached training")

    monkeypatch.setattr(pekd.train, "run", must_not_train)
    capsys.readouterr()
    code = 0
    try:
        pekd.train.main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_experiments_groups_models_and_env_without_importing_torch() -> None:
    probe = ("import runpy, sys; sys.argv = ['pekd.train', '--help']; runpy.run_module('pekd.train', "
             "run_name='__main__'); print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED')")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("TORCH_NOT_IMPORTED")
    for experiment in (REPO / "configs" / "experiment").glob("*.yaml"):
        assert f"  {experiment.stem} " in out.stdout
    for name in MODEL_NAMES:
        assert name in out.stdout
    for word in ("PEKD_DATA", "PEKD_TEACHERS", "--cfg job", "launchers/submit.py -m", "teacher:", "method:"):
        assert word in out.stdout


def test_every_registry_model_is_a_config_group_option() -> None:
    files = {p.stem for p in (REPO / "configs" / "model").glob("*.yaml")}
    assert files == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        assert (REPO / "configs" / "model" / f"{name}.yaml").read_text().strip() == f"name: {name}"


@pytest.mark.parametrize("mode", ["job", "all"])
def test_cfg_prints_the_composed_config(mode: str, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = main(["--cfg", mode, "experiment=cifar100_r56_r20", "model=resnet110", "seed=7"], capsys,
                          monkeypatch)
    assert code == 0, err
    assert "name: resnet110" in out and "seed: 7" in out and "run_dir: " in out


@pytest.mark.parametrize(("args", "needles"), [
    (["+trainer.lrr=0.1"], ["trainer.lrr", "did you mean trainer.lr?"]),
    (["++method.bta=3"], ["method.bta", "method.beta"]),
    (["hydra.run.dir=x"], ["hydra.run.dir=x", "run_dir="]),
    (["hydra/launcher=basic"], ["hydra/launcher", "run_dir="]),
    (["model.name=resnet1100"], ["model.name", "'resnet1100'", "resnet110"]),
    (["teacher.name=resnt56"], ["teacher.name", "resnet56"]),
    (["method.q=1,3"], ["method.q=1,3", "launchers/submit.py -m", "--local"]),
    (["seed=range(3)"], ["seed=range(3)", "launchers/submit.py -m"]),
    (["--multirun", "method.q=1,3"], ["--multirun", "launchers/submit.py -m"]),
    (["-m"], ["-m", "launchers/submit.py -m"]),
    (["--cfg", "hydra"], ["--cfg hydra", "--cfg job"]),
    (["--cfg", "jobs"], ["--cfg jobs", "job"]),
    (["--config-name", "x"], ["--config-name", "--help"]),
])
def test_what_hydra_would_accept_is_one_error_line(args: list[str], needles: list[str],
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in (args, ["--cfg", "job", *args] if args[0] != "--cfg" else args):
        code, out, err = main(argv, capsys, monkeypatch)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and out == ""
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])


def test_cfg_before_overrides_still_means_job(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out, err = main(["--cfg", "data=digits", "model=resnet8", f"run_dir={tmp_path / 'r'}"], capsys, monkeypatch)
    assert code == 0, err
    assert "source: digits" in out and not (tmp_path / "r").exists()
