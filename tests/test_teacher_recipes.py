"""The CIFAR-100 teachers train in the same harness as their students: one recipe per paper teacher
(configs/experiment/teacher_cifar100_<name>.yaml, RepDistiller's teacher recipe), and its exported student.pt is
what a distillation recipe's teacher.weights reads."""

import json
from pathlib import Path

import pytest

from pekd.train import CONFIG_DIR, compose_config
from tests.train_helpers import TINY, train

TEACHERS = ("resnet32x4", "wrn_40_2", "resnet56", "vgg13")


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_recipe_is_repdistillers(name):
    cfg = compose_config([f"experiment=teacher_cifar100_{name}", "run_dir=unused"])
    assert cfg.name == f"teacher_cifar100_{name}"
    assert cfg.model.name == name and cfg.model.weights == ""
    assert cfg.method.name == "ce" and cfg.method.kd_weight == 0 and cfg.teacher.mode == "none"
    assert cfg.data.source == "cifar100" and cfg.data.batch_size == 64 and cfg.data.augment == "cifar"
    t = cfg.trainer
    assert (t.epochs, t.lr, t.momentum, t.weight_decay, t.lr_gamma) == (240, 0.05, 0.9, 5e-4, 0.1)
    assert list(t.milestones) == [150, 180, 210] and t.lr_scaling == "none" and not t.nesterov


def test_every_cifar100_distillation_teacher_has_a_recipe():
    recipes = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("cifar100_*.yaml"))
    assert recipes, "no CIFAR-100 distillation recipes found"
    teachers = {compose_config([f"experiment={r}", "run_dir=unused"]).teacher.name for r in recipes}
    assert teachers == set(TEACHERS)


def test_teacher_run_serves_a_pefd_student(tmp_path):
    """The teacher recipe trains (shrunk to digits and resnet8), and a distillation recipe reads its student.pt."""
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    [(rc, err)] = train(["experiment=teacher_cifar100_resnet32x4", *TINY, "trainer.epochs=1", "trainer.milestones=[1]",
                         f"run_dir={teacher_dir}"], timeout=300)
    assert rc == 0, err
    res = json.loads((teacher_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["name"] == "teacher_cifar100_resnet32x4" and res["method"] == "ce"
    assert res["best_top1"] > 30.0, "one epoch of resnet8 on digits is well above chance (10%)"

    [(rc, err)] = train(["experiment=cifar100_r32x4_r8x4", *TINY, "teacher.name=resnet8",
                         f"teacher.weights={teacher_dir / 'student.pt'}", "trainer.max_steps=2",
                         f"run_dir={student_dir}"], timeout=300)
    assert rc == 0, err
    res = json.loads((student_dir / "results.json").read_text())
    assert res["status"] == "stopped" and res["global_step"] == 2 and res["method"] == "pefd"
    assert res["teacher"] == "resnet8" and res["student"] == "resnet8"
    log = (student_dir / "logs" / "rank0.log").read_text()
    assert "resnet8 -> resnet8 with pefd" in log and " feat " in log, log
