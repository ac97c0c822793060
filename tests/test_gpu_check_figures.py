"""The GPU check's speed rows read their figures from text and files that only a GPU run produces in full: the
headline's parser on bench.host_overhead's CUDA lines, and the K-runs pace on overlapping metrics.csv logs --
checked here, so a GPU slot is not spent finding a parsing slip."""

from __future__ import annotations

import csv

import pytest

from bench.gpu_check.headline import figure
from bench.gpu_check.run_metrics import images_per_s, together

CUDA_LINES = """
pekd eager: pekd / official = 2.10x, 459 vs 497 aten ops / step, GPU busy 35% vs 20%, 0 graph launches
pekd compiled: pekd / official = 3.05x, 120 vs 497 aten ops / step, GPU busy 60% vs 20%, 0 graph launches
pekd graphed: pekd / official = 6.40x, 40 vs 497 aten ops / step, GPU busy 95% vs 20%, 3 graph launches
graphs Inductor ran without CUDA graphs (cudagraph_skips): 0
"""


def test_the_headline_reads_every_candidate_and_the_goal():
    text, details = figure(CUDA_LINES, cuda=True)
    assert set(details["ratios"]) == {"eager", "compiled", "graphed"}
    assert "graphed 6.40x (40 vs 497 aten ops/step, GPU busy 95% vs 20%, 3 graph launches)" in text
    assert text.endswith("goal >= 3x: met (best: graphed)")


def test_the_headline_names_a_skipped_candidate_and_needs_eager():
    text, _ = figure("pekd eager: pekd / official = 1.19x, 459 vs 497 aten ops / step\n"
                     "pekd graphed: NOT CHECKED (CUDA graphs need a CUDA device, this run trains on cpu)\n", cuda=False)
    assert text == ("pekd / official loop: eager 1.19x (459 vs 497 aten ops/step); graphed NOT CHECKED (CUDA graphs "
                    "need a CUDA device, this run trains on cpu)")
    with pytest.raises(RuntimeError, match="pekd eager"):
        figure("Traceback ...", cuda=False)


def write_log(run_dir, logs: list[tuple[int, float, float]]) -> None:
    """metrics.csv rows of train/images_per_s: (step, value, time)."""
    run_dir.mkdir()
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "tag", "value", "time"])
        w.writerows((step, "train/images_per_s", value, t) for step, value, t in logs)


def test_runs_together_are_timed_only_while_all_of_them_run(tmp_path):
    """Run a logs every 10 steps from t=0 to 10 (100 steps/s); run b starts late (t=4) and ends late, at 50
    steps/s: the shared window is t in [4, 10], where a's pace is 100 and b's 50 steps/s, batch 2."""
    write_log(tmp_path / "a", [(10 * i, 999.0, float(i)) for i in range(1, 11)])
    write_log(tmp_path / "b", [(10 * i, 999.0, 4.0 + 0.2 * i) for i in range(60)])
    pace, window = together([tmp_path / "a", tmp_path / "b"], batch=2)
    assert window == pytest.approx(6.0)
    assert pace == pytest.approx(2 * 10 + 2 * 50)
    assert images_per_s(tmp_path / "a") == 999.0
