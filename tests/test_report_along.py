"""pekd.report --along on hand-made run directories: at every value of the key, each claim's paired numbers equal
scipy's (t interval, ttest_rel, the exact sign-flip permutation test), seeds are paired only within a value,
Holm runs across every comparison shown, and report.json / report.csv / report.png carry it all."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats as sps

from pekd.report.along import is_log
from pekd.report.cli import main as report
from pekd.report.stats import holm
from pekd.train import compose_config

EVAL_SET = {"source": "digits", "split": "test", "n": 360, "hash": "ab12"}
SEEDS = list(range(7))
FD = {100: [60.1, 61.3, 59.8, 60.6, 61.0, 60.2, 60.9], 1000: [80.0, 80.9, 79.7, 80.3, 81.2, 80.4, 80.8]}
GAIN = {100: [-1.1, -0.8, -1.5, -0.9, -1.3, -1.0, -0.7], 1000: [0.6, 0.9, 0.4, 1.1, 0.8, 0.5, 0.7]}


@cache
def _config(method: str, subset: int) -> str:
    return OmegaConf.to_yaml(compose_config(["data=digits", "model.name=resnet8", "teacher.name=resnet8",
                                             f"method={method}", f"data.subset={subset}"]))


def _write(root: Path, method: str, subset: int, seed: int, best: float, **analysis: Any) -> None:
    run_dir = root / f"{method}_n{subset}_s{seed}"
    run_dir.mkdir(parents=True)
    cfg = OmegaConf.create(_config(method, subset))
    cfg.seed = seed
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "results.json").write_text(json.dumps({"status": "completed", "best_top1": best, "last_top1": best,
                                                      "eval_set": EVAL_SET}))
    if analysis:
        (run_dir / "analysis.json").write_text(json.dumps(analysis))


def _study(root: Path, skip_pefd_seed_at_100: int | None = None) -> None:
    for subset in FD:
        for seed, fd, gain in zip(SEEDS, FD[subset], GAIN[subset], strict=True):
            _write(root, "fd", subset, seed, fd, student_cos_distance=0.1 + subset / 1e4)
            if seed != skip_pefd_seed_at_100 or subset != 100:
                _write(root, "pefd", subset, seed, fd + gain, projector_dead_fraction=0.3 - subset / 1e4 + seed / 100,
                       projector_cos_distance=0.05)


def test_along_matches_scipy_at_every_value_with_holm_over_all(tmp_path: Path) -> None:
    _study(tmp_path)
    report([str(tmp_path), "--along", "data.subset", "--compare", "method=pefd>method=fd"])
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["along"] == ["data.subset"]
    comps = data["comparisons"]
    assert [c["along"] for c in comps] == [{"data.subset": 100}, {"data.subset": 1000}]
    for c in comps:
        subset = c["along"]["data.subset"]
        pefd = [f + g for f, g in zip(FD[subset], GAIN[subset], strict=True)]
        diffs = np.array(pefd) - np.array(FD[subset])
        best = c["best_top1"]
        assert c["n"] == 7 and c["seeds"] == SEEDS
        assert best["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-12)
        low, high = sps.t.interval(0.95, 6, loc=diffs.mean(), scale=sps.sem(diffs))
        assert best["ci"] == pytest.approx([low, high], abs=1e-12)
        assert c["p_ttest"] == pytest.approx(sps.ttest_rel(pefd, FD[subset]).pvalue, rel=1e-12)
        exact = sps.permutation_test((diffs,), lambda d, axis: np.mean(d, axis=axis), permutation_type="samples",
                                     n_resamples=np.inf, alternative="two-sided")
        assert c["p_perm"] == pytest.approx(exact.pvalue, rel=1e-12) == 2 / 2**7  # every seed one way
        assert [s for s, _ in best["diffs"]] == SEEDS and [d for _, d in best["diffs"]] == pytest.approx(diffs)
    assert [c["p_holm"] for c in comps] == pytest.approx(holm([c["p_perm"] for c in comps])) == [4 / 128] * 2
    low, high = comps
    assert low["verdict"] == "method=pefd > method=fd: reversed at 5% (Holm p=0.0312)"
    assert high["verdict"] == "method=pefd > method=fd: supported at 5% (Holm p=0.0312)"

    table = (tmp_path / "report.md").read_text()
    assert "| method=pefd > method=fd | 100 | 7 |" in table and "| method=pefd > method=fd | 1000 | 7 |" in table
    assert "| method=pefd | 1000 | 7/7 |" in table  # rows labelled within a value: not subset=100 / subset=1000
    mech = {(m["label"], m["along"]["data.subset"]): m for m in data["mechanism"]}
    assert mech[("method=pefd", 100)]["projector_dead_fraction"]["mean"] == pytest.approx(0.29 + 0.03)
    assert mech[("method=fd", 1000)]["student_cos_distance"]["mean"] == pytest.approx(0.2)
    assert "dead projector units" in table.split("## Mechanism")[1]
    assert (tmp_path / "report.png").stat().st_size > 0


def test_along_never_pairs_across_values(tmp_path: Path) -> None:
    """Seed 3 of PEFD is missing at subset=100 only: the same seed at subset=1000 never stands in for it."""
    _study(tmp_path, skip_pefd_seed_at_100=3)
    report([str(tmp_path), "--along", "data.subset"])
    data = json.loads((tmp_path / "report.json").read_text())
    at = {c["along"]["data.subset"]: c for c in data["comparisons"]}
    assert set(at) == {100, 1000}
    assert at[100]["n"] == 6 and at[100]["seeds"] == [0, 1, 2, 4, 5, 6]
    assert at[100]["unpaired"] == ["seed 3 missing in method=pefd"]
    assert at[1000]["n"] == 7 and not at[1000]["unpaired"]
    expected = [-g for s, g in zip(SEEDS, GAIN[100], strict=True) if s != 3]  # A = FD here: FD - PEFD
    assert [d for _, d in at[100]["best_top1"]["diffs"]] == pytest.approx(expected)
    # A of each claim is the row with the higher mean *at that value*
    assert (at[100]["a"], at[1000]["a"]) == ("method=fd", "method=pefd")


def test_report_csv_is_long_format_with_every_number(tmp_path: Path) -> None:
    _study(tmp_path)
    report([str(tmp_path), "--along", "data.subset", "--compare", "method=pefd>method=fd"])
    data = json.loads((tmp_path / "report.json").read_text())
    with open(tmp_path / "report.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert list(lines[0]) == ["section", "data.subset", "label", "seed", "metric", "statistic", "value", "note"]
    index = {(x["section"], x["data.subset"], x["label"], x["seed"], x["metric"], x["statistic"]): x for x in lines}
    for c in data["comparisons"]:
        key = ("comparison", str(c["along"]["data.subset"]), "method=pefd > method=fd")
        assert float(index[(*key, "", "best_top1", "p_holm")]["value"]) == c["p_holm"]
        assert float(index[(*key, "", "best_top1", "mean_diff")]["value"]) == c["best_top1"]["mean_diff"]
        assert index[(*key, "", "best_top1", "verdict")]["note"] == c["verdict"]
        for seed, diff in c["best_top1"]["diffs"]:
            assert float(index[(*key, str(seed), "best_top1", "diff")]["value"]) == diff
    assert float(index[("row", "100", "method=fd", "3", "best_top1", "value")]["value"]) == FD[100][3]
    assert index[("mechanism", "1000", "method=pefd", "6", "projector_dead_fraction", "value")]


def test_plain_report_csv_has_no_along_columns_and_unknown_keys_are_one_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _study(tmp_path)
    for path in tmp_path.glob("*_n1000_*"):
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    report([str(tmp_path)])
    header = (tmp_path / "report.csv").read_text().splitlines()[0]
    assert header == "section,label,seed,metric,statistic,value,note"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        report([str(tmp_path), "--along", "data.subsett"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: --along data.subsett: no run has that key")
    assert "method.name" in err and len(err.strip().splitlines()) == 1


def test_log_axis_where_the_values_span_a_decade() -> None:
    assert is_log([500, 2000, 8000]) and is_log([1, 10]) and not is_log([5, 25]) and not is_log([0, 100])


def test_plot_keeps_the_teacher_off_the_students_axis_and_one_panel_for_one_evaluation(tmp_path: Path) -> None:
    from pekd.report.along import points
    from pekd.report.cli import find_runs
    from pekd.report.plot import _one_evaluation, axis_range

    _study(tmp_path)
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    cfg = OmegaConf.create(_config("ce", 0))
    cfg.model.name, cfg.name = "resnet20", "teacher"
    (teacher / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (teacher / "results.json").write_text(json.dumps({"status": "completed", "best_top1": 95.0, "last_top1": 94.0,
                                                      "eval_set": EVAL_SET}))
    (point,) = points([r for r in find_runs(tmp_path) if "n1000" not in r.path.name], [], None, "perm")
    compared = {label for c in point.comparisons for label in (c["a"], c["b"])}
    assert compared == {"method=fd", "method=pefd"}  # the teacher is another model: compared with nothing
    lo, hi = axis_range(point.rows, compared, "best_top1")
    assert lo < min(FD[100]) - 1 < hi < 63  # the students' range, not stretched to the teacher's 95
    assert not _one_evaluation(point.rows)  # the teacher's best and last differ: two panels
    students = [r for r in point.rows if r.label in compared]
    assert _one_evaluation(students)  # every student evaluated once: best = last, one panel
