"""pekd.analyze on real runs: a CE teacher and a PEFD student trained on sklearn digits, analysed in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pekd.analyze import KEYS, main
from pekd.models import read_weights
from tests.train_helpers import TINY, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CE teacher (no teacher of its own), and a PEFD q=2 student distilled from it; one epoch each."""
    root = tmp_path_factory.mktemp("analyze")
    teacher, student = root / "teacher", root / "student"
    [(rc, err)] = train(TINY + ["method=ce", "teacher=none", "trainer.epochs=1", f"run_dir={teacher}"])
    assert rc == 0, err
    [(rc, err)] = train(TINY + ["method=pefd", "method.q=2", "teacher.name=resnet8", "teacher.mode=online",
                                f"teacher.weights={teacher / 'student.pt'}", "trainer.epochs=1",
                                "trainer.milestones=[5]", f"run_dir={student}"])
    assert rc == 0, err
    return {"teacher": teacher, "student": student}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def analysis(run_dir: Path) -> dict:
    return json.loads((run_dir / "analysis.json").read_text())


def test_analysis_of_a_pefd_student_and_a_ce_run(runs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from pekd.data.sources import run_sources

    main([str(runs["teacher"]), str(runs["student"])])
    out = capsys.readouterr().out
    assert "projector ensemble output, CKA to teacher" in out and str(runs["student"]) in out

    s, t = analysis(runs["student"]), analysis(runs["teacher"])
    for a in (s, t):
        assert set(a) == set(KEYS)
        assert a["weights"] == "student.pt" and a["pekd_version"]
    train_src, test_src = run_sources(OmegaConf.load(runs["student"] / "config.yaml"))
    assert s["eval_set"] == test_src.identity() and s["train_set"] == train_src.identity()
    assert (s["n_train"], s["n_test"]) == (len(train_src), len(test_src)) == (1437, 360)

    # same test set and weights as the run's own last evaluation (fp32: trainer.amp=off)
    assert s["student_test_top1"] == pytest.approx(results(runs["student"])["last_top1"], abs=1e-6)
    assert t["student_test_top1"] == pytest.approx(results(runs["teacher"])["last_top1"], abs=1e-6)
    assert s["teacher_test_top1"] == pytest.approx(t["student_test_top1"], abs=1e-6)  # the teacher is that run
    assert s["teacher_train_top1"] == pytest.approx(t["student_train_top1"], abs=1e-6)
    assert s["train_test_gap"] == pytest.approx(s["student_train_top1"] - s["student_test_top1"], abs=1e-9)
    assert 0 <= s["student_train_top1"] <= 100 and s["student_test_top1"] > 30, "one epoch beats chance (10%)"

    assert 0 <= s["student_cka"] <= 1 and 0 <= s["projector_cka"] <= 1
    assert 0 <= s["student_ece"] <= 100 and -100 <= s["student_overconfidence"] <= 100
    assert s["teacher_ece"] == pytest.approx(t["student_ece"], abs=1e-9)

    # a CE run without a teacher: no teacher metrics, no CKA
    for key in ("student_cka", "projector_cka", "teacher_train_top1", "teacher_test_top1", "teacher_ece",
                "teacher_overconfidence"):
        assert t[key] is None, key
    assert t["student_ece"] is not None


def test_runs_sharing_a_teacher_reuse_its_outputs_exactly(runs: dict[str, Path], tmp_path: Path) -> None:
    """One invocation over a sweep runs the teacher once per set; the second run reads it from the cache."""
    main([str(runs["student"]), "--quiet"])
    alone = analysis(runs["student"])
    copy = tmp_path / "copy"
    shutil.copytree(runs["student"], copy)
    main([str(runs["student"]), str(copy), "--quiet"])
    assert analysis(copy) == alone == analysis(runs["student"])


def test_projector_cka_uses_the_projectors_own_student(runs: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """best.pt replaced by other weights: the student metrics follow it, the projector CKA stays with the
    checkpoint's student (the one the projectors were trained with), and the output says so."""
    main([str(runs["student"])])
    reference = analysis(runs["student"])
    copy = tmp_path / "run"
    shutil.copytree(runs["student"], copy)
    state, _ = read_weights(str(copy / "best.pt"))
    gen = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.5 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                 for k, v in state.items()}
    torch.save(perturbed, copy / "best.pt")
    capsys.readouterr()

    main([str(copy), "--weights", "best.pt"])
    out = capsys.readouterr().out
    assert "best.pt differs from the student in ckpt-" in out
    a = analysis(copy)
    assert a["weights"] == "best.pt"
    assert a["projector_cka"] == pytest.approx(reference["projector_cka"], abs=1e-9)
    assert a["student_cka"] != pytest.approx(reference["student_cka"], abs=1e-6)


def bad_runs(runs: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], str]]:
    fresh = shutil.ignore_patterns("analysis.json")
    no_student = tmp / "no_student"
    shutil.copytree(runs["student"], no_student, ignore=fresh)
    (no_student / "student.pt").unlink()
    lost_teacher = tmp / "lost_teacher"
    shutil.copytree(runs["student"], lost_teacher, ignore=fresh)
    cfg = OmegaConf.load(lost_teacher / "config.yaml")
    cfg.teacher.weights = str(tmp / "gone.pt")
    OmegaConf.save(cfg, lost_teacher / "config.yaml")
    (tmp / "empty").mkdir()
    return {"missing": ([str(tmp / "nope")], "is not a directory"),
            "no_config": ([str(tmp / "empty")], "has no config.yaml"),
            "no_student": ([str(no_student)], "student.pt' not found"),
            "no_best_weights_choice": ([str(no_student), "--weights", "last.pt"], "invalid choice"),
            "lost_teacher": ([str(lost_teacher)], "teacher.weights="),
            "good_then_bad": ([str(runs["teacher"]), str(tmp / "nope")], "is not a directory")}


def test_bad_input_is_one_error_line_and_writes_nothing(runs: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    (runs["teacher"] / "analysis.json").unlink(missing_ok=True)
    for name, (argv, needle) in bad_runs(runs, tmp_path).items():
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, name
        assert needle in err and "Traceback" not in err, (name, err)
        if name != "no_best_weights_choice":  # argparse prints its usage first
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (name, err)
    assert not (runs["teacher"] / "analysis.json").exists(), "a bad run dir later in the list stops all writes"
    assert not list(tmp_path.glob("*/analysis.json"))
