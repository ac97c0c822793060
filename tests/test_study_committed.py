"""The committed study reproduces: `pekd.report` over the committed run files (`python -m pekd.study --export`)
prints the committed numbers, so docs/study's figures are what the runs say and nothing edited by hand. Every
exported part (a folder of docs/study with a study.json) is covered, the first study's and each one added later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pekd.report.cli import OPTIONS_FILE
from pekd.report.cli import main as report_main
from pekd.science.study_plan import report_options
from tests.train_helpers import REPO

STUDIES = sorted(p.parent for p in (REPO / "docs" / "study").rglob("study.json"))


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: str(p.relative_to(REPO)))
@pytest.mark.parametrize("typed", [True, False], ids=["options typed", "options from the runs' file"])
def test_committed_report_reproduces(study: Path, typed: bool, tmp_path: Path) -> None:
    """With the study's options typed, and with none: `python -m pekd.report docs/study/runs` alone reads them from
    the file the study wrote beside its runs, so the documented command makes the committed report."""
    assert (study / "runs").is_dir(), f"{study} has no committed runs"
    options = report_options(json.loads((study / "study.json").read_text()))
    stored = json.loads((study / "runs" / OPTIONS_FILE).read_text())["options"]
    assert stored == options
    report_main([str(study / "runs"), "--out", str(tmp_path), *(options if typed else [])])
    assert (tmp_path / "report.csv").read_text() == (study / "report.csv").read_text()
    again, committed = (json.loads((d / "report.json").read_text()) for d in (tmp_path, study))
    assert {**again, "root": None} == {**committed, "root": None}
    assert again["comparisons"], "the committed study compares nothing"
