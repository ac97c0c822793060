"""pekd.report on hand-made run directories: grouping over seeds, mean ± std, the paper's figure, and flags for
runs that are incomplete, failed, crashed before results, or never started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pekd.report import main as report
from pekd.train import compose_config

BASE = ["data=digits", "model.name=resnet8", "teacher.name=resnet8", "name=toy", "paper_top1=75.5"]


def _run(root: Path, name: str, overrides: list[str], status: str | None, best: float = 0.0,
         last: float = 0.0, **extra: str) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(compose_config([*BASE, *overrides])))
    if status:
        results = {"status": status, "best_top1": best, "last_top1": last, "epoch": 1, "epochs": 2, **extra}
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


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

    report([str(root)])

    table = (root / "report.md").read_text()
    assert capsys.readouterr().out.startswith(table)
    assert table.index("toy (beta=5.0)") < table.index("toy (beta=25.0)")
    assert "| toy (beta=5.0) | 2/3 | 71.00 ± 1.41 | 70.00 ± 1.41 | 75.50 | preempted: b5_s2 |" in table
    assert "| toy (beta=25.0) | 0/2 | – | – | 75.50 | failed: b25_s0, no results: b25_s1 |" in table
    flagged = table.split("## Incomplete or failed runs")[1]
    for line in ("preempted at epoch 1/2", f"failed at epoch 1/2: {root / 'b25_s0'} (RuntimeError: DataLoader "
                 "worker (pid #))", f"no results: {root / 'b25_s1'}",
                 f"not started: {never}"):
        assert line in flagged
    assert (root / "report.png").stat().st_size > 0


def test_report_refuses_an_empty_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        report([str(tmp_path)])
    assert "no pekd runs" in capsys.readouterr().err
