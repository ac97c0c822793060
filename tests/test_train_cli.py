"""`pekd train` as a Hydra user drives it: --help, --cfg job|all, Hydra's own flags, and the overrides Hydra would
let pass, each refused with the same one-line did-you-mean however it is spelled.

The composition cases run in-process through `pekd.train_cli.main` (with training replaced by a failure); --help
runs as a real process, which must answer without importing torch (that import alone is 3-5 s here, the reason
`--help` used to take 4-13 s).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import pekd.train
import pekd.train_cli
from pekd.models.registry import MODEL_NAMES
from tests.train_helpers import REPO


def main(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    def must_not_train(cfg: object) -> None:
        pytest.fail("the command line reached training")

    monkeypatch.setattr(pekd.train, "run", must_not_train)
    capsys.readouterr()
    code = 0
    try:
        pekd.train_cli.main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_experiments_groups_models_and_env_without_importing_torch() -> None:
    probe = ("import runpy, sys\nsys.argv = ['pekd', 'train', '--help']\ntry:\n"
             "    runpy.run_module('pekd', run_name='__main__')\nfinally:\n"
             "    print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED')")  # pekd exits
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("TORCH_NOT_IMPORTED")
    for experiment in (REPO / "configs" / "experiment").glob("*.yaml"):
        assert f"  {experiment.stem} " in out.stdout
    for name in MODEL_NAMES:
        assert name in out.stdout
    for word in ("PEKD_DATA", "PEKD_TEACHERS", "--cfg job", "pekd submit -m", "teacher:", "method:", "--config-dir"):
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
    assert "name: resnet110" in out and "seed: 7" in out and "run_dir: runs/cifar100_r56_r20-" in out


def test_cfg_job_prints_the_config_resolved(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """`--cfg job` says it prints the resolved config: the teacher's path as this shell gives it, not the
    `${oc.env:PEKD_TEACHERS,teachers}` it is written as."""
    monkeypatch.setenv("PEKD_TEACHERS", str(tmp_path / "t"))
    code, out, err = main(["--cfg", "job", "experiment=cifar100_r56_r20"], capsys, monkeypatch)
    assert code == 0, err
    assert "${" not in out
    assert f"  weights: {tmp_path / 't'}/resnet56_vanilla/ckpt_epoch_240.pth" in out.splitlines()


def _run_dir(out: str) -> str:
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("run_dir: "))


def test_ad_hoc_runs_are_named_by_what_they_train(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = main(["--cfg", "job", "data=digits", "model=resnet8", "method=ce", "teacher=none"], capsys,
                          monkeypatch)
    assert code == 0, err
    ce_dir = _run_dir(out)
    assert re.fullmatch(r"runs/digits_resnet8_ce-[0-9a-f]{8}", ce_dir), ce_dir
    code, out, err = main(["--cfg", "job", "data=digits", "model=resnet8", "method=fd", "teacher.name=resnet20",
                           "teacher.weights=t.pt"], capsys, monkeypatch)
    assert code == 0, err
    assert re.fullmatch(r"runs/digits_resnet20_resnet8_fd-[0-9a-f]{8}", _run_dir(out)), out
    # a run started before runs had these names is still where the same command looks
    legacy = tmp_path / "runs" / f"run-{ce_dir.rsplit('-', 1)[1]}"
    legacy.mkdir(parents=True)
    code, out, err = main(["--cfg", "job", "data=digits", "model=resnet8", "method=ce", "teacher=none"], capsys,
                          monkeypatch)
    assert code == 0 and _run_dir(out) == f"runs/{legacy.name}", err

@pytest.mark.parametrize(("args", "needles"), [
    (["+trainer.lrr=0.1"], ["trainer.lrr", "did you mean trainer.lr?"]),
    (["trainer.lrr=0.1"], ["trainer.lrr is not a pekd config key (did you mean trainer.lr?)"]),
    (["model=resnet9"], ["model=resnet9", "did you mean resnet8 or resnet56 or resnet50?"]),
    (["experiment=cifar100_r56_r2O"], ["experiment=cifar100_r56_r2O", "did you mean cifar100_r56_r20"]),
    (["modle=resnet8"], ["modle", "did you mean model?"]),
    (["--config-dir", "x"], ["--config-dir", "PEKD_CONFIG_DIR", "PEKD_CONFIG_PATH"]),
    (["--config-path=x"], ["--config-path", "PEKD_CONFIG_PATH"]),
    (["--info"], ["--info", "pekd train --help", "--cfg job"]),
    (["--shell-completion", "install=bash"], ["--shell-completion", "pekd train --help"]),
    (["++method.bta=3"], ["method.bta", "method.beta"]),
    (["hydra.run.dir=x"], ["hydra.run.dir=x", "run_dir="]),
    (["hydra/launcher=basic"], ["hydra/launcher", "run_dir="]),
    (["model.name=resnet1100"], ["model.name", "'resnet1100'", "resnet110"]),
    (["teacher.name=resnt56"], ["teacher.name", "resnet56"]),
    (["method.q=1,3"], ["method.q=1,3", "pekd submit -m", "--local"]),
    (["seed=range(3)"], ["seed=range(3)", "pekd submit -m"]),
    (["--multirun", "method.q=1,3"], ["--multirun", "pekd submit -m"]),
    (["-m"], ["-m", "pekd submit -m"]),
    (["--cfg", "hydra"], ["--cfg hydra", "--cfg job"]),
    (["--cfg", "jobs"], ["--cfg jobs", "job"]),
    (["--config-name", "x"], ["--config-name", "--help", "experiment=NAME"]),
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


@pytest.mark.parametrize("spellings", [["trainer.lrr=0.1", "+trainer.lrr=0.1", "++trainer.lrr=0.1"],
                                       ["model=resnet9", "model.name=resnet9"]])
def test_a_typo_gets_the_same_suggestion_however_it_is_spelled(spellings: list[str],
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Hydra answered `key=` with "To append to your config use +key=" (which pekd then refused) and `group=` with
    its search path; every spelling now gets pekd's one line, with the same did-you-mean."""
    hints = set()
    for spelling in spellings:
        code, out, err = main(["--cfg", "job", spelling], capsys, monkeypatch)
        assert code == 2 and err.count("\n") == 1 and "append" not in err and "search path" not in err.lower(), err
        hints.add(re.search(r"\(did you mean [^)]*\)", err).group(0))  # type: ignore[union-attr]
    assert len(hints) == 1, hints
