"""pekd.analyze on real runs: a CE teacher and a PEFD student trained on sklearn digits, analysed in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from pekd.analyze import KEYS, main
from pekd.models import read_weights
from tests.train_helpers import TINY, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CE teacher (no teacher of its own), and a PEFD q=2 student distilled from it; one epoch each."""
    root = tmp_path_factory.mktemp("analyze")
    teacher, student = root / "teacher", root / "student"
    [(rc, err)] = train(TINY + ["method=ce", "teacher=none", "trainer.epochs=1", f"run_dir={teacher}"])
    assert rc == 0, err
    [(rc, err)] = train(TINY + ["method=pefd", "method.q=2", "teacher.name=resnet8", "teacher.mode=online",
                                f"teacher.weights={teacher / 'student.pt'}", "trainer.epochs=1",
                                "trainer.milestones=[5]", "trainer.analyze=true", f"run_dir={student}"])
    assert rc == 0, err
    fused = json.loads((student / "analysis.json").read_text())  # written by the run from its final evaluation
    return {"teacher": teacher, "student": student, "fused": fused}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def analysis(run_dir: Path) -> dict:
    return json.loads((run_dir / "analysis.json").read_text())


def test_analysis_of_a_pefd_student_and_a_ce_run(runs: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
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
    assert len(s["projector_dead_fractions"]) == 2 and all(0 <= f <= 1 for f in s["projector_dead_fractions"])
    assert s["projector_dead_fraction"] == pytest.approx(sum(s["projector_dead_fractions"]) / 2)
    assert 0 <= s["projector_cos_distance"] <= 1 and 0 <= s["student_cos_distance"] <= 2  # resnet8: d_s = d_t
    assert 0 <= s["student_ece"] <= 100 and -100 <= s["student_overconfidence"] <= 100
    assert s["teacher_ece"] == pytest.approx(t["student_ece"], abs=1e-9)

    # a CE run without a teacher: no teacher metrics, no CKA
    for key in ("student_cka", "projector_cka", "projector_dead_fraction", "projector_cos_distance",
                "student_cos_distance", "teacher_train_top1", "teacher_test_top1", "teacher_ece",
                "teacher_overconfidence"):
        assert t[key] is None, key
    assert t["student_ece"] is not None


def test_the_fused_analysis_equals_the_second_pass(runs: dict[str, Any]) -> None:
    """trainer.analyze=true took the diagnostics from the final evaluation's forward pass; pekd.analyze's own pass
    over the same run (amp off) gives the same numbers."""
    main([str(runs["student"]), "--quiet"])
    second, fused = analysis(runs["student"]), runs["fused"]
    assert (fused["test_pass"], second["test_pass"]) == ("final evaluation", "pekd.analyze")
    assert fused["projector_cka"] is not None and fused["n_test"] == 360
    for key in KEYS:
        if key in ("test_pass", "pekd_version"):
            continue
        a, b = fused[key], second[key]
        if isinstance(a, float) or isinstance(a, list):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), key
        else:
            assert a == b, key


def test_the_logit_projectors_own_top1_beside_the_raw_logits(runs: dict[str, Any], tmp_path: Path) -> None:
    """KD with the official code's logit projector: the run is evaluated on its raw logits, and analysis.json adds
    the top-1 of Linear(logits), the head only the KD term reads -- the same from the final evaluation and from
    pekd.analyze's pass over the checkpoint's projector; PEFD has none to measure."""
    run = tmp_path / "kd_proj"
    [(rc, err)] = train(TINY + ["method=kd", "method.logit_projector=true", "teacher.name=resnet8",
                                "teacher.mode=online", f"teacher.weights={runs['teacher'] / 'student.pt'}",
                                "trainer.epochs=1", "trainer.milestones=[5]", "trainer.analyze=true", f"run_dir={run}"])
    assert rc == 0, err
    fused = analysis(run)
    main([str(run), "--quiet"])
    second = analysis(run)
    assert 0 <= fused["projected_logits_test_top1"] <= 100
    assert fused["projected_logits_test_top1"] == pytest.approx(second["projected_logits_test_top1"], abs=1e-9)
    assert fused["student_test_top1"] == pytest.approx(results(run)["last_top1"], abs=1e-9)
    assert runs["fused"]["projected_logits_test_top1"] is None


def test_runs_sharing_a_teacher_reuse_its_outputs_exactly(runs: dict[str, Any], tmp_path: Path) -> None:
    """One invocation over a sweep runs the teacher once per set; the second run reads it from the cache."""
    main([str(runs["student"]), "--quiet"])
    alone = analysis(runs["student"])
    copy = tmp_path / "copy"
    shutil.copytree(runs["student"], copy)
    main([str(runs["student"]), str(copy), "--quiet"])
    assert analysis(copy) == alone == analysis(runs["student"])


def test_projector_cka_uses_the_projectors_own_student(runs: dict[str, Any], tmp_path: Path,
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


def bad_runs(runs: dict[str, Any], tmp: Path) -> dict[str, tuple[list[str], str]]:
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


def test_bad_input_is_one_error_line_and_writes_nothing(runs: dict[str, Any], tmp_path: Path,
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


def test_dead_units_and_alignment_of_hand_built_projectors() -> None:
    """Projector weights that make known units dead: unit j of a projector is dead when no input gives it a
    positive pre-activation; alignment is mean(1 - cos) of the ensemble's average with the teacher's feature."""
    from pekd.methods.projector import LinearReluEnsemble
    from pekd.science.diagnostics import Meters, Models, observe

    ens = LinearReluEnsemble(2, 3, 2)  # two projectors of 3 units from a 2-d feature
    w0 = torch.tensor([[1.0, 0.0], [-1.0, -1.0], [0.0, 1.0]])  # unit 1 dead on non-negative inputs
    w1 = torch.tensor([[-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])  # units 0 and 1 dead
    ens.load_projectors([w0, w1], [torch.zeros(3), torch.tensor([0.0, 0.0, -0.5])])
    feats = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])  # ReLU features: non-negative
    teacher_feat = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])

    class Student(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, torch.zeros(x.shape[0], 4)

    class Teacher(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return teacher_feat[: x.shape[0]], torch.zeros(x.shape[0], 4)

    m = Meters()
    models = Models(Student(), Teacher(), ens)
    observe(m, models, feats, torch.zeros(3, dtype=torch.long), torch.arange(3), feats, torch.zeros(3, 4), None, True)
    assert m.dead.fractions() == [pytest.approx(1 / 3), pytest.approx(2 / 3)] and m.dead.mean() == pytest.approx(0.5)
    # by hand: projector 0 gives (x0, 0, x1), projector 1 gives (0, 0, relu(x0 + x1 - 0.5)); average them
    p = torch.tensor([[0.5, 0, 0.25], [0, 0, 1.75], [1.5, 0, 2.25]])
    expected = [1 - float(torch.dot(a, b) / (a.norm() * b.norm())) for a, b in zip(p.double(), teacher_feat.double(),
                                                                                  strict=True)]
    assert m.projector_cos.value() == pytest.approx(sum(expected) / 3, rel=1e-12)
    assert m.student_cos.n == 0  # d_s = 2, d_t = 3: the student's own feature has no alignment to report
    assert torch.equal(ens(feats), ens.per_projector(feats).mean(dim=1))
