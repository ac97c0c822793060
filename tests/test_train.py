"""End to end on real data: a teacher, then a PEFD student, through `python -m pekd.train`; and bad input."""

import json
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pekd.models import read_weights
from tests.train_helpers import REPO, TINY, run_python, train


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("teacher")
    [(rc, err)] = train(TINY + ["method=ce", "teacher=none", "trainer.epochs=2", "trainer.milestones=[1]",
                                f"run_dir={run_dir}"])
    assert rc == 0, err
    return run_dir


def test_teacher_run_directory_is_self_describing(teacher):
    res = json.loads((teacher / "results.json").read_text())
    assert res["status"] == "completed" and res["epoch"] == 2
    assert res["best_top1"] > 80.0, "resnet8 learns digits well above chance (10%) in two epochs"
    for f in ("config.yaml", "meta.json", "student.pt", "best.pt", "logs/rank0.log"):
        assert (teacher / f).is_file(), f
    assert json.loads((teacher / "meta.json").read_text())["torch"] == torch.__version__


def test_pefd_student_trains_and_logs_every_term(teacher, tmp_path):
    run_dir = tmp_path / "pefd"
    [(rc, err)] = train(TINY + ["method=pefd", "method.q=3", "teacher.name=resnet8", "teacher.mode=online",
                                f"teacher.weights={teacher / 'student.pt'}", "trainer.epochs=1",
                                f"run_dir={run_dir}"])
    assert rc == 0, err
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["method"] == "pefd"
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss_ce", "train/loss_feat", "train/loss", "train/lr", "train/images_per_s",
            "val/top1", "val/top5"} <= tags
    feat = [e.value for e in acc.Scalars("train/loss_feat")]
    assert feat[-1] < feat[0], "the cosine feature loss goes down while training"
    assert acc.Scalars("val/top1")[-1].value == pytest.approx(res["last_top1"], abs=1e-3)
    student_keys = set(read_weights(str(run_dir / "student.pt"))[0])
    assert not any("projector" in k for k in student_keys), "projectors are not part of the exported student"


def run_cli(args, cwd=REPO):
    return run_python(["-m", "pekd.train", *args], cwd=cwd)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_names_and_keys(tmp_path):
    assert_one_line_error(run_cli(TINY + ["model.name=resnet9", f"run_dir={tmp_path}/a"]), "resnet9")
    assert_one_line_error(run_cli(TINY + ["method.name=pekd", f"run_dir={tmp_path}/b"]), "method.name")
    assert_one_line_error(run_cli(TINY + ["trainer.lrr=0.1"]), "trainer.lrr")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_fd_needs_equal_dims(teacher, tmp_path):
    wrong_dims = TINY + ["method=fd", "teacher.name=resnet8x4", f"teacher.weights={teacher / 'student.pt'}",
                         f"run_dir={tmp_path}/fd"]
    assert_one_line_error(run_cli(wrong_dims), "resnet8x4")  # the checkpoint does not fit resnet8x4 first


def test_fd_dimension_check_names_both_sizes(tmp_path):
    from pekd.config import MethodConfig
    from pekd.errors import PekdError
    from pekd.methods import build_method

    with pytest.raises(PekdError, match="64.*256"):
        build_method(MethodConfig(name="fd"), 64, 256)


def test_missing_and_corrupt_data(tmp_path):
    assert_one_line_error(run_cli(TINY + ["data=cifar100", f"data.root={tmp_path}/nowhere", "method=ce",
                                          "teacher=none", f"run_dir={tmp_path}/c"]), "nowhere", "cifar-100-python")
    bad = tmp_path / "cifar-100-python"
    bad.mkdir()
    for name in ("train", "test", "meta"):
        (bad / name).write_bytes(b"\x80\x04 this is not a pickle")
    assert_one_line_error(run_cli(TINY + ["data=cifar100", f"data.root={tmp_path}", "method=ce", "teacher=none",
                                          f"run_dir={tmp_path}/d"]), "corrupt")


def test_teacher_checkpoint_for_wrong_architecture(teacher, tmp_path):
    proc = run_cli(TINY + ["method=pefd", "teacher.name=wrn_16_2", f"teacher.weights={teacher / 'student.pt'}",
                           f"run_dir={tmp_path}/e"])
    assert_one_line_error(proc, "first bad key")


def test_run_dir_of_another_config_is_refused_and_kept(teacher, tmp_path):
    copy = tmp_path / "teacher_copy"
    shutil.copytree(teacher, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    proc = run_cli(TINY + ["method=ce", "teacher=none", "trainer.epochs=3", f"run_dir={copy}"])
    assert_one_line_error(proc, "different config", "trainer.epochs")
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert before == after, "a refused run must not touch the existing run directory"
