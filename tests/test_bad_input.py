"""Bad input to `python -m pekd.train`: one `error:` line naming the key, exit status 2, nothing written or deleted.

Every case below is a mistake a user can make on the command line. Each must end the same way: exit status 2,
stderr's last non-empty line is the only one starting with `error:`, no traceback, the message names the
offending key (or value), and the file system is as it was -- a finished run the case points at is byte-for-byte
unchanged, and a fresh run_dir was never created.

Where it runs (to keep the file near a minute: each subprocess pays 3-5 s of torch import): the cases refused
by config validation (`compose_config`, before any training code) run in-process through
`pekd.train.main([...])` -- the function `python -m pekd.train` calls -- with `run` replaced by a failure, so a
case that slips through cannot start training. The cases marked `subprocess=True` run as real
`python -m pekd.train` processes: those only caught inside `run` (unknown model, missing dataset, subset larger
than the data, a run_dir of another config, a run_dir that is a file, under a file or under /proc), plus the
experiment typo (it used to train the default recipe) and keep_last=0 against the finished run (a key a resume
may change, so it used to resume and rewrite that run). Every case is also checked in-process with `--cfg`
(print the composed config), which must refuse it the same way or print the config, never crash.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import pekd.train
from tests.train_helpers import TINY, run_python, train

# The finished run every `at_run` case points at: CE alone, one epoch.
RUN = TINY + ["method=ce", "teacher=none", "trainer.epochs=1", "trainer.milestones=[1]"]


@dataclass(frozen=True)
class Case:
    """One bad command line: overrides added to RUN, what the error must name, where run_dir points."""

    overrides: tuple[str, ...]
    needle: str  # the key (or value) the one-line message must name
    run_dir: str = "fresh"  # fresh: a new path that must stay absent | run: the finished run | none: given inline
    subprocess: bool = False


CASES: dict[str, Case] = {
    # recipes and names
    "experiment_typo": Case(("experiment=cifar100_r56_r2O",), "experiment=", subprocess=True),
    "unknown_model": Case(("model.name=nope",), "model 'nope'", subprocess=True),
    "unknown_method": Case(("method.name=nope",), "method.name"),
    "typo_key": Case(("trainer.no_such_key=1",), "trainer.no_such_key"),
    "missing_dataset": Case(("data=cifar100", "data.root=/nonexistent"), "data.root", subprocess=True),
    "subset_too_large": Case(("data.subset=100000",), "data.subset", subprocess=True),
    # run directories
    "other_config": Case(("trainer.epochs=3",), "trainer.epochs", run_dir="run", subprocess=True),
    "run_dir_is_file": Case(("run_dir={file}",), "run_dir", run_dir="none", subprocess=True),
    "run_dir_under_file": Case(("run_dir={file}/run",), "run_dir", run_dir="none", subprocess=True),
    "run_dir_in_proc": Case(("run_dir=/proc/pekd-no-such/run",), "run_dir", run_dir="none", subprocess=True),
    # keys a resume may change: aimed at the finished run, which a bad value must not resume and rewrite
    "keep_last_0": Case(("trainer.keep_last=0",), "trainer.keep_last", run_dir="run", subprocess=True),
    "log_every_0": Case(("trainer.log_every_steps=0",), "trainer.log_every_steps", run_dir="run"),
    "workers_neg": Case(("data.workers=-1",), "data.workers", run_dir="run"),
    "max_micro_neg": Case(("data.max_micro_batch=-1",), "data.max_micro_batch", run_dir="run"),
    "eval_batch_0": Case(("data.eval_batch_size=0",), "data.eval_batch_size", run_dir="run"),
    "eval_batch_neg": Case(("data.eval_batch_size=-8",), "data.eval_batch_size", run_dir="run"),
    "ckpt_every_neg": Case(("trainer.ckpt_every_steps=-1",), "trainer.ckpt_every_steps", run_dir="run"),
    "max_steps_neg": Case(("trainer.max_steps=-1",), "trainer.max_steps", run_dir="run"),
    "threads_neg": Case(("trainer.threads=-1",), "trainer.threads", run_dir="run"),
    # ranges of the recipe
    "eval_every_0": Case(("trainer.eval_every_epochs=0",), "trainer.eval_every_epochs"),
    "beta_neg": Case(("method.beta=-1",), "method.beta"),
    "beta_nan": Case(("method.beta=nan",), "method.beta"),
    "ce_weight_neg": Case(("method.ce_weight=-1",), "method.ce_weight"),
    "kd_weight_neg": Case(("method.kd_weight=-0.5",), "method.kd_weight"),
    "temperature_0": Case(("method.temperature=0",), "method.temperature"),
    "temperature_neg": Case(("method.temperature=-4",), "method.temperature"),
    "grad_clip_neg": Case(("trainer.grad_clip=-1",), "trainer.grad_clip"),
    "val_subset_neg": Case(("data.val_subset=-1",), "data.val_subset"),
    "subset_neg": Case(("data.subset=-5",), "data.subset"),
    "weight_decay_neg": Case(("trainer.weight_decay=-1e-4",), "trainer.weight_decay"),
    "momentum_1": Case(("trainer.momentum=1",), "trainer.momentum"),
    "momentum_neg": Case(("trainer.momentum=-0.1",), "trainer.momentum"),
    "nesterov_no_momentum": Case(("trainer.momentum=0", "trainer.nesterov=true"), "trainer.nesterov"),
    "lr_gamma_0": Case(("trainer.lr_gamma=0",), "trainer.lr_gamma"),
    "milestone_0": Case(("trainer.milestones=[0,1]",), "trainer.milestones"),
    "milestones_dup": Case(("trainer.milestones=[1,1]",), "trainer.milestones"),
    "milestones_down": Case(("trainer.milestones=[2,1]",), "trainer.milestones"),
    # seeds (a negative one used to end in torch's "expected non-negative integer" traceback)
    "seed_neg": Case(("seed=-1",), "seed=-1"),
    "split_seed_neg": Case(("data.split_seed=-3",), "data.split_seed"),
    "lease_stale_0": Case(("trainer.lease_stale_s=0",), "trainer.lease_stale_s", run_dir="run"),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under folder -> its content hash ('dir' for folders): equal snapshots, untouched tree."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real finished run, alone in its folder (so a run moved aside or a sibling made would show)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    [(rc, err)] = train(RUN + [f"run_dir={run_dir}"])
    assert rc == 0, err
    assert (run_dir / "results.json").is_file() and any((run_dir / "checkpoints").iterdir())
    return run_dir


def command_line(case: Case, finished: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """The overrides for one case and the path whose state is checked afterwards."""
    a_file = tmp_path / "a_file"
    a_file.write_bytes(b"not a folder\n")
    args = RUN + [o.format(file=a_file) for o in case.overrides]
    if case.run_dir == "run":
        return args + [f"run_dir={finished}"], finished
    if case.run_dir == "fresh":
        return args + [f"run_dir={tmp_path / 'fresh'}"], tmp_path / "fresh"
    return args, Path(args[-1].split("=", 1)[1])


def in_process(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`pekd.train.main(args)` as `python -m pekd.train` runs it, except that training itself is refused."""

    def must_not_train(cfg: object) -> None:
        pytest.fail("the bad value passed config validation and reached training")

    monkeypatch.setattr(pekd.train, "run", must_not_train)
    capsys.readouterr()
    code = 0
    try:
        pekd.train.main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def assert_one_error_line(code: int, stderr: str, needle: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, stderr
    assert needle in lines[-1], lines[-1]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_touches_nothing(name: str, finished: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    args, target = command_line(case, finished, tmp_path)
    before_run = snapshot(finished.parent)
    before_target = target.read_bytes() if target.is_file() else None

    if case.subprocess:
        proc = run_python(["-m", "pekd.train", *args])
        code, stderr = proc.returncode, proc.stderr
    else:
        code, stderr = in_process(args, capsys, monkeypatch)
    assert_one_error_line(code, stderr, case.needle)

    assert snapshot(finished.parent) == before_run, "a refused run must not touch an existing run directory"
    if before_target is not None:
        assert target.read_bytes() == before_target, f"{target} was changed"
    elif target != finished:
        assert not target.exists(), f"{target} was created by a refused run"

    # --cfg composes and prints the config: refused the same way when validation catches the case, else printed
    code, stderr = in_process(["--cfg", *args], capsys, monkeypatch)
    assert "Traceback" not in stderr, stderr
    if case.subprocess and code == 0:
        assert not stderr.strip(), stderr
    else:
        assert_one_error_line(code, stderr, case.needle)
    assert snapshot(finished.parent) == before_run


# A run directory's own files, damaged: (file, how) -> what the one error line must name besides the file.
DAMAGED = {
    "config_yaml_garbage": ("config.yaml", b"model: {name: [resnet8\n", "on_existing=overwrite"),
    "config_yaml_binary": ("config.yaml", b"\x00\xff\xfe\x00", "on_existing=overwrite"),
    "config_yaml_a_list": ("config.yaml", b"- a\n- b\n", "on_existing=overwrite"),
    "lease_garbage": ("lease/000000001.json", b'{"generation": 1, "ho', "delete that file"),
    "every_checkpoint_truncated": ("checkpoints/*", b"PEKDCKPT1\n", "on_existing=overwrite"),
    "tb_a_file": ("tb", b"events\n", "move that file aside"),
    "logs_a_file": ("logs", b"rank0\n", "move that file aside"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_file_of_the_run_directory_is_one_error_naming_it(name: str, finished: Path, tmp_path: Path) -> None:
    """The same command run again on a run directory whose own file is damaged: one error line naming the file and
    the way out, and the run's data left as it was (~10 s each: a real `python -m pekd.train`)."""
    relative, damage, way_out = DAMAGED[name]
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    targets = sorted(run_dir.glob(relative))
    assert targets, relative
    for target in targets:
        if target.is_dir():  # a file in a folder's place
            shutil.rmtree(target)
        target.write_bytes(damage)
    before = snapshot(run_dir)
    proc = run_python(["-m", "pekd.train", *RUN, f"run_dir={run_dir}"])
    needle = str(run_dir / relative) if "*" not in relative else str(run_dir / "checkpoints")
    assert_one_error_line(proc.returncode, proc.stderr, needle)
    assert way_out in proc.stderr.splitlines()[-1]
    if "*" not in relative:  # refused before the run directory is adopted: nothing at all changes
        assert snapshot(run_dir) == before, "a refused run must leave the run directory as it was"
    else:  # refused at resume, after adopting it (config.yaml, meta.json, logs, lease): the run's data is as it was
        kept = ("checkpoints", "results.json", "best.pt", "student.pt")
        assert {k: v for k, v in snapshot(run_dir).items() if k.startswith(kept)} == \
            {k: v for k, v in before.items() if k.startswith(kept)}


@pytest.mark.parametrize("reader", ["pekd.report", "pekd.analyze"])
def test_readers_of_a_run_directory_name_its_damaged_config(reader: str, finished: Path, tmp_path: Path) -> None:
    """pekd.report and pekd.analyze read config.yaml of finished runs: a damaged one is one error line naming the
    file (as a resumed run says), not a YAML traceback, and nothing in the run changes."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "config.yaml").write_bytes(DAMAGED["config_yaml_garbage"][1])
    before = snapshot(run_dir)
    proc = run_python(["-m", reader, str(run_dir)])
    assert_one_error_line(proc.returncode, proc.stderr, str(run_dir / "config.yaml"))
    assert snapshot(run_dir) == before


def test_a_folder_where_the_run_writes_a_file_is_one_error_naming_it(finished: Path, tmp_path: Path) -> None:
    """A folder in the place of a file the run rewrites (results.json, rewritten by the rerun of a finished run):
    one line naming it and the way out (before: "check the filesystem holding that folder", which is not the
    problem), and the run's checkpoints and weights as they were."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "results.json").unlink()
    (run_dir / "results.json").mkdir()
    kept = ("checkpoints", "best.pt", "student.pt")
    before = {k: v for k, v in snapshot(run_dir).items() if k.startswith(kept)}
    proc = run_python(["-m", "pekd.train", *RUN, f"run_dir={run_dir}"])
    assert_one_error_line(proc.returncode, proc.stderr, str(run_dir / "results.json"))
    assert "move the folder aside" in proc.stderr.splitlines()[-1]
    assert {k: v for k, v in snapshot(run_dir).items() if k.startswith(kept)} == before
