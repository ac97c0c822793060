"""pekd.report on hand-made run directories: rows over seeds with their CIs, labels a reader can tell apart,
comparisons paired by seed (only on the same evaluation images) with verdicts, the mechanism table, report.json
agreeing with report.md, and flags for runs that are incomplete, failed, crashed before results, or never started."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from pekd.report import stats
from pekd.report.cli import main as report
from pekd.train import compose_config

BASE = ("data=digits", "model.name=resnet8", "teacher.name=resnet8", "name=toy", "paper_top1=75.5")
EVAL_SET = {"source": "digits", "split": "test", "n": 360, "hash": "ab12"}


@cache
def _config_yaml(overrides: tuple[str, ...]) -> str:
    return OmegaConf.to_yaml(compose_config(list(overrides)))  # Hydra composes are slow: once per config


def _run(root: Path, name: str, overrides: list[str], status: str | None, best: float = 0.0,
         last: float = 0.0, base: tuple[str, ...] = BASE, **extra: Any) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(_config_yaml((*base, *overrides)))
    if status:
        results = {"status": status, "best_top1": best, "last_top1": last, "epoch": 1, "epochs": 2, **extra}
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def _sweep(root: Path, method: str, best: list[float], seeds: list[int] | None = None, **extra: Any) -> None:
    """One run per seed of method (last top-1 = best - 0.5), all evaluated on EVAL_SET unless extra says else."""
    for seed, value in zip(seeds or range(len(best)), best, strict=True):
        extra.setdefault("eval_set", EVAL_SET)
        _run(root, f"{method}_s{seed}", [f"method={method}", f"seed={seed}"], "completed", value, value - 0.5,
             **extra)


def _report(root: Path, *args: str) -> tuple[str, dict[str, Any]]:
    report([str(root), *args])
    return (root / "report.md").read_text(), json.loads((root / "report.json").read_text())


def test_report_groups_seeds_and_flags_unfinished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    _run(root, "b5_s0", ["method.beta=5", "seed=0"], "completed", 70.0, 69.0)
    _run(root, "b5_s1", ["method.beta=5", "seed=1"], "completed", 72.0, 71.0)
    _run(root, "b5_s2", ["method.beta=5", "seed=2"], "preempted", 10.0, 10.0)
    _run(root, "b25_s0", ["method.beta=25", "seed=0"], "failed", error="RuntimeError: DataLoader worker (pid #)")
    _run(root, "b25_s1", ["method.beta=25", "seed=1"], None)
    launches = root / "launches"
    launches.mkdir()
    never = root / "b25_s2"
    (launches / "123.json").write_text(json.dumps({"runs": [{"job_id": "123_5", "run_dir": str(never)}]}))

    table, data = _report(root)

    assert capsys.readouterr().out.startswith(table)
    assert table.index("| beta=5.0 |") < table.index("| beta=25.0 |")
    # two seeds: t(0.975, 1) * 1.41 / sqrt(2) = 12.71, not the std
    assert "| beta=5.0 | 2/3 | 71.00 ± 12.71 | 70.00 ± 12.71 | 75.50 | preempted: b5_s2 |" in table
    assert "| beta=25.0 | 0/2 | – | – | 75.50 | failed: b25_s0, no results: b25_s1 |" in table
    flagged = table.split("## Incomplete or failed runs")[1]
    for line in ("preempted at epoch 1/2", f"failed at epoch 1/2: {root / 'b25_s0'} (RuntimeError: DataLoader "
                 "worker (pid #))", f"no results: {root / 'b25_s1'}",
                 f"not started: {never}"):
        assert line in flagged
    assert {f["status"] for f in data["flagged"]} == {"preempted", "failed", "no results", "not started"}
    (comparison,) = data["comparisons"]  # beta=25 has no completed seed: shown, not tested
    assert comparison["n"] == 0 and comparison["verdict"] == "not enough paired seeds (n=0)"
    assert (root / "report.png").stat().st_size > 0


def test_report_refuses_an_empty_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        report([str(tmp_path)])
    assert "no pekd runs" in capsys.readouterr().err


def test_a_consistent_difference_over_six_seeds_is_supported(tmp_path: Path) -> None:
    fd = [70.1, 71.3, 69.8, 70.6, 71.0, 70.2]
    _sweep(tmp_path, "fd", fd)
    _sweep(tmp_path, "pefd", [v + d for v, d in zip(fd, [0.9, 1.2, 0.8, 1.1, 1.0, 1.3], strict=True)])
    table, data = _report(tmp_path)
    assert "| method=fd |" in table and "| method=pefd |" in table  # what varies, not name= three times
    (c,) = data["comparisons"]
    assert (c["a"], c["b"], c["n"]) == ("method=pefd", "method=fd", 6)  # A: the higher mean
    assert c["p_perm"] == c["p_holm"] == 2 / 64
    assert c["verdict"] == "method=pefd > method=fd: supported at 5% (Holm p=0.0312)"
    assert 0 < c["p_ttest"] < 1e-4
    best = c["best_top1"]
    row = (f"| method=pefd > method=fd | 6 | {best['mean_diff']:+.2f} [{best['ci'][0]:+.2f}, {best['ci'][1]:+.2f}] "
           f"| {c['last_top1']['mean_diff']:+.2f} [")
    assert row in table and (f"| 0.0312 | 0.0312 | {c['mde']:.2f} | {stats.fmt_p(c['p_tost_holm'])} | supported at 5% "
                             "(Holm p=0.0312) |") in table
    for r in data["rows"]:  # report.json's numbers are the table's
        s = r["best_top1"]
        assert f"| {r['label']} | 6/6 | {s['mean']:.2f} ± {s['ci_half']:.2f} |" in table
        assert [x["seed"] for x in r["runs"]] == list(range(6))


def test_five_seeds_cannot_support_a_claim_and_the_report_says_why(tmp_path: Path) -> None:
    _sweep(tmp_path, "fd", [70.0, 71.0, 70.5, 70.2, 70.8])
    _sweep(tmp_path, "pefd", [72.0, 73.0, 72.5, 72.2, 72.8])
    _, data = _report(tmp_path)
    (c,) = data["comparisons"]
    assert c["verdict"] == ("method=pefd > method=fd: not supported at 5% (Holm p=0.0625; 5 paired seeds cannot "
                            "give p below 0.0625, so no effect could have been seen)")
    assert c["mde"] is None  # no size of effect could have passed


def test_the_paired_t_test_can_decide_instead(tmp_path: Path) -> None:
    """--test t: the verdict follows the paired t-test (the CI's own test), which five seeds can pass."""
    from scipy.stats import ttest_rel

    fd = [70.0, 71.0, 70.5, 70.2, 70.8]
    pefd = [v + d for v, d in zip(fd, [1.9, 2.2, 1.8, 2.1, 2.0], strict=True)]
    _sweep(tmp_path, "fd", fd)
    _sweep(tmp_path, "pefd", pefd)
    table, data = _report(tmp_path, "--test", "t")
    (c,) = data["comparisons"]
    assert c["p_holm"] == c["p_ttest"] == pytest.approx(ttest_rel(pefd, fd).pvalue, rel=1e-12)
    assert c["p_ttest"] < 1e-4
    assert c["verdict"].startswith("method=pefd > method=fd: supported at 5%") and c["test"] == "t"
    assert "The verdicts use the paired t-test" in table and data["test"].startswith("paired t-test")


def test_identical_methods_are_not_supported_and_the_claim_can_be_chosen(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    values = [70.0, 71.0, 70.5, 70.2, 70.8, 71.4]
    _sweep(tmp_path, "fd", values)
    _sweep(tmp_path, "pefd", values)
    _, data = _report(tmp_path, "--compare", "method=pefd>method=fd")
    (c,) = data["comparisons"]
    assert c["p_perm"] == 1.0 and c["p_ttest"] is None
    assert c["verdict"] == "method=pefd > method=fd: not supported at 5% (Holm p=1)"
    with pytest.raises(SystemExit):
        report([str(tmp_path), "--compare", "pefd>fd"])
    assert "the labels are: 'method=fd'; 'method=pefd'" in capsys.readouterr().err


def test_the_other_direction_is_named_and_holm_counts_every_claim(tmp_path: Path) -> None:
    fd = [70.0, 71.0, 70.5, 70.2, 70.8, 71.4, 70.9]
    _sweep(tmp_path, "fd", fd)
    _sweep(tmp_path, "pefd", [v + 2 for v in fd])
    _, data = _report(tmp_path, "--compare", "method=fd > method=pefd", "--compare", "method=pefd>method=fd")
    first, second = data["comparisons"]
    assert first["p_perm"] == 2 / 128 and first["p_holm"] == second["p_holm"] == 2 * 2 / 128
    assert first["verdict"] == "method=fd > method=pefd: reversed at 5% (Holm p=0.0312)"
    assert second["verdict"] == "method=pefd > method=fd: supported at 5% (Holm p=0.0312)"


def test_unpaired_seeds_and_other_test_images_are_never_paired(tmp_path: Path) -> None:
    _sweep(tmp_path, "fd", [70.0, 71.0, 70.5, 70.2, 70.8])
    _sweep(tmp_path, "pefd", [71.0, 72.0, 71.5, 71.8], seeds=[0, 1, 2, 4])
    table, data = _report(tmp_path)
    (c,) = data["comparisons"]
    assert c["n"] == 4 and c["seeds"] == [0, 1, 2, 4]
    assert c["unpaired"] == ["seed 3 missing in method=pefd"]
    assert "- method=pefd vs method=fd: unpaired: seed 3 missing in method=pefd" in table

    other = tmp_path / "other"
    _sweep(other, "fd", [70.0, 71.0, 70.5])
    _sweep(other, "pefd", [71.0, 72.0], seeds=[0, 1])
    _run(other, "pefd_s2", ["method=pefd", "seed=2"], "completed", 71.5, 71.0, eval_set={**EVAL_SET, "n": 180})
    _, data = _report(other)
    (c,) = data["comparisons"]
    assert c["seeds"] == [0, 1] and c["unpaired"] == ["seed 2: evaluated on different images (eval_set differs)"]


def test_labels_show_only_what_varies_with_short_unambiguous_names(tmp_path: Path) -> None:
    # a teacher run next to its students (another family), and a bank seed next to an online teacher
    _run(tmp_path, "teacher", ["model.name=resnet20", "method=ce", "teacher=none", "name=teacher", "seed=0",
                               "trainer.milestones=[18,25]"], "completed", 85.0, 85.0, eval_set=EVAL_SET)
    for q in (1, 3):
        _run(tmp_path, f"q{q}", ["method=pefd", f"method.q={q}", "seed=0", "teacher.weights=/w/t/student.pt"],
             "completed", 80.0 + q, 80.0, eval_set=EVAL_SET)
    _run(tmp_path, "bank1", ["method=pefd", "method.q=3", "seed=0", "teacher.weights=/w/t/student.pt",
                             "bank.seed=1"], "completed", 83.0, 80.0, eval_set=EVAL_SET)
    table, data = _report(tmp_path)
    labels = [r["label"] for r in data["rows"]]
    assert sorted(labels) == ["q=1 bank.seed=0", "q=3 bank.seed=0", "q=3 bank.seed=1", "teacher"]
    assert "name=" not in table and "model=" not in table


def test_rows_with_names_of_their_own_are_labelled_by_them(tmp_path: Path) -> None:
    """The demo names its rows ("PEFD q=1"): a name the user chose is the label, and --compare takes it."""
    for method, name in (("fd", "FD no projector"), ("pefd", "PEFD q=1")):
        for seed, value in enumerate([70.0, 71.0, 70.5]):
            _run(tmp_path, f"{method}_s{seed}", [f"method={method}", f"seed={seed}", f"name='{name}'"],
                 "completed", value, value, eval_set=EVAL_SET)
    _, data = _report(tmp_path, "--compare", "PEFD q=1>FD no projector")
    assert sorted(r["label"] for r in data["rows"]) == ["FD no projector", "PEFD q=1"]
    assert [(c["a"], c["b"]) for c in data["comparisons"]] == [("PEFD q=1", "FD no projector")]


def test_a_demo_sweep_reads_as_methods_with_the_teacherless_baseline(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = ("data=digits", "data.subset=150", "trainer.epochs=3", "trainer.milestones=[2]")
    student = (*base, "model.name=resnet8", "teacher.name=resnet20", "teacher.weights=runs/demo/teacher/student.pt")
    _run(tmp_path, "teacher", ["model.name=resnet20", "method=ce", "teacher=none", "name=demo_teacher",
                               "trainer.milestones=[18,25]"], "completed", 85.9, 85.9, base=base, eval_set=EVAL_SET)
    runs = {"ce": ["method=ce", "teacher=none", "model.name=resnet8"], "kd": ["method=kd"], "fd": ["method=fd"],
            "pefd_1": ["method=pefd", "method.q=1"], "pefd_3": ["method=pefd"]}
    for i, (slug, overrides) in enumerate(runs.items()):
        for seed in range(2):
            _run(tmp_path, f"{slug}_s{seed}", [*overrides, "name=demo", f"seed={seed}"], "completed",
                 80.0 + i + seed, 80.0, base=base if slug == "ce" else student, eval_set=EVAL_SET)
    _, data = _report(tmp_path)
    labels = [r["label"] for r in data["rows"]]
    assert labels == ["demo_teacher", "method=ce teacher=none", "method=fd teacher=resnet20",
                      "method=kd teacher=resnet20",  # not ce_weight=0.1 kd_weight=0.9: what method=kd means
                      "method=pefd q=1 teacher=resnet20", "method=pefd q=3 teacher=resnet20"]
    pairs = {(c["a"], c["b"]) for c in data["comparisons"]}
    assert len(pairs) == 10 and ("method=fd teacher=resnet20", "method=ce teacher=none") in pairs
    assert not any("demo_teacher" in pair for pair in pairs)  # another student: never compared with these
    with pytest.raises(SystemExit):
        report([str(tmp_path), "--compare", "demo_teacher>method=ce teacher=none"])
    assert "they differ in model.name" in capsys.readouterr().err


def test_mechanism_table_from_analysis_json(tmp_path: Path) -> None:
    _sweep(tmp_path, "fd", [70.0, 71.0])
    _sweep(tmp_path, "pefd", [71.0, 72.0])
    for seed, (gap, cka) in enumerate([(4.0, 0.80), (5.0, 0.84)]):
        (tmp_path / f"pefd_s{seed}" / "analysis.json").write_text(json.dumps(
            {"train_test_gap": gap, "student_cka": cka, "projector_cka": None, "student_ece": 3.0 + seed}))
    table, data = _report(tmp_path)
    (m,) = data["mechanism"]  # fd has no analysis.json: not in the table
    assert m["label"] == "method=pefd" and m["runs"] == 2 and m["projector_cka"]["n"] == 0
    assert m["student_cka"]["mean"] == pytest.approx(0.82)
    mechanism = table.split("## Mechanism")[1]
    assert (f"| method=pefd | 2 | 4.50 ± {m['train_test_gap']['ci_half']:.2f} | 0.820 ± "
            f"{m['student_cka']['ci_half']:.3f} | – | 3.50 ± ") in mechanism
    assert "method=fd" not in mechanism


def test_a_sweep_whose_runs_all_failed_reports_them_without_a_traceback(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Every job failed (some before writing anything: only the launch record names them): the report lists them
    and says plainly that nothing completed; no plot is drawn, and an older one is not left beside the report."""
    root = tmp_path / "runs"
    _run(root, "pefd_s0", ["method=pefd", "seed=0"], "failed", error="RuntimeError: CUDA error")
    launches = root / "launches"
    launches.mkdir()
    never = [root / "fd_s0", root / "fd_s1"]
    (launches / "7.json").write_text(json.dumps({"runs": [{"job_id": f"7_{i}", "run_dir": str(d)}
                                                          for i, d in enumerate(never)]}))
    (root / "report.png").write_bytes(b"an older report's plot")

    table, data = _report(root)

    out = capsys.readouterr().out
    assert "No run completed: there is nothing to average, compare or plot." in table and out.startswith(table)
    assert "Traceback" not in out and "report.png" not in out.split("written:")[1]
    assert not (root / "report.png").exists()
    assert {f["status"] for f in data["flagged"]} == {"failed", "not started"} and data["comparisons"] == []
    flagged = table.split("## Incomplete or failed runs")[1]
    assert f"failed at epoch 1/2: {root / 'pefd_s0'} (RuntimeError: CUDA error)" in flagged
    assert all(f"not started: {d}" in flagged for d in never)

    only_launched = tmp_path / "launched"  # no run wrote even its config.yaml
    (only_launched / "launches").mkdir(parents=True)
    (only_launched / "launches" / "8.json").write_text(json.dumps({"runs": [{"run_dir": str(only_launched / "a")}]}))
    table, data = _report(only_launched, "--along", "data.subset")
    assert "No run completed" in table and data["rows"] == [] and data["flagged"][0]["status"] == "not started"


def test_a_ce_run_that_names_a_teacher_it_never_uses_is_labelled_as_it_trains(tmp_path: Path) -> None:
    """CE builds no teacher (pekd.train), so a CE run of a sweep whose teacher=resnet56 trains exactly as one with
    teacher=none: both read teacher=none, and their directories tell the rows apart. A CE run whose teacher mode
    still changes its data (teacher.mode=bank: the bank's stored views) keeps the teacher settings that do."""
    base = ("data=digits", "model.name=resnet8")
    runs = {"ce_none": ["teacher=none", "method=ce"], "ce_unused": ["teacher=resnet56", "method=ce"],
            "ce_views": ["teacher=resnet56", "method=ce", "teacher.mode=bank", "teacher.bank=banks/r56"],
            "fd": ["teacher=resnet56", "method=fd"]}
    for i, (slug, overrides) in enumerate(runs.items()):
        for seed in range(2):
            _run(tmp_path, f"{slug}_s{seed}", [*overrides, f"seed={seed}"], "completed", 80.0 + i + seed, 80.0,
                 base=base, eval_set=EVAL_SET)
    _, data = _report(tmp_path)
    assert [r["label"] for r in data["rows"]] == [
        "method=ce teacher=none [ce_none_s0]", "method=ce teacher=none [ce_unused_s0]",
        "method=ce teacher=resnet56 teacher.bank=r56 mode=bank", "method=fd teacher=resnet56 mode=online"]
