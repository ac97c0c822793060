"""The paper's top-1 beside a row: each experiment config records the figure published for its pair and method,
and pekd.report shows it only for rows that train that method (a method changed on the command line keeps the
experiment's name and number, which then belong to another method)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pekd.engine.rundir import flatten
from pekd.report.cli import main as report
from pekd.report.paper import published
from pekd.train import compose_config

EVAL_SET = {"source": "cifar100", "split": "test", "n": 10000, "hash": "ab12"}


def _flat(*overrides: str) -> dict[str, object]:
    return flatten(OmegaConf.to_container(compose_config([*overrides, "run_dir=unused"]), resolve=True))


def test_each_recipe_shows_its_own_figure_and_no_other_methods() -> None:
    assert published(_flat("experiment=cifar100_r56_r20_kd")) == 70.66
    assert published(_flat("experiment=cifar100_r56_r20_ce")) == 69.06
    assert published(_flat("experiment=imagenet_r34_r18")) == 72.23
    # the PEFD recipe's own figure was not found: recorded as none, shown as none
    assert published(_flat("experiment=cifar100_r56_r20")) is None
    # the experiment's number stays in the config when its method is changed: it is not the run's any more
    assert _flat("experiment=imagenet_r34_r18", "method=kd")["paper_top1"] == 72.23
    assert published(_flat("experiment=imagenet_r34_r18", "method=kd")) is None
    assert published(_flat("experiment=imagenet_r34_r18", "method.q=1")) is None
    assert published(_flat("experiment=cifar100_r56_r20_kd", "method.temperature=1")) is None
    # a run of the user's own recipe states its own figure (no experiment of that name to check it against)
    assert published(_flat("experiment=cifar100_r56_r20", "name=mine", "paper_top1=71.5")) == 71.5


def test_report_puts_the_figure_beside_the_best_column_or_says_none_is_recorded(tmp_path: Path) -> None:
    for stem, values in (("cifar100_r56_r20_kd", [70.1, 70.9]), ("cifar100_r56_r20", [71.0, 71.4]),
                         ("cifar100_r56_r20_ce", [68.8, 69.3])):
        cfg = OmegaConf.to_yaml(compose_config([f"experiment={stem}", "run_dir=unused"]))
        for seed, value in enumerate(values):
            run = tmp_path / stem / f"s{seed}"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(re.sub(r"^seed: 0$", f"seed: {seed}", cfg, flags=re.MULTILINE))
            (run / "results.json").write_text(json.dumps({"status": "completed", "best_top1": value,
                                                          "last_top1": value, "eval_set": EVAL_SET}))
    report([str(tmp_path)])
    table = (tmp_path / "report.md").read_text()
    data = json.loads((tmp_path / "report.json").read_text())
    assert "paper top-1 (%), best epoch" in table and "papers report the best epoch's top-1" in table
    papers = {r["label"]: r["paper_top1"] for r in data["rows"]}
    assert sorted(papers.values(), key=str) == [69.06, 70.66, None]
    (pefd,) = [label for label, paper in papers.items() if paper is None]
    assert f"| {pefd} | 2/2 | 71.20 ± " in table and "| not recorded |" in table
    assert len(data["comparisons"]) == 3  # the CE baseline is compared with both distillations of its pair


@pytest.mark.parametrize("margin", ["0", "-1"])
def test_margin_must_be_positive(tmp_path: Path, margin: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(["data=digits", "run_dir=x"])))
    with pytest.raises(SystemExit):
        report([str(tmp_path), "--margin", margin])
    err = capsys.readouterr().err
    assert err.startswith("error: --margin") and "positive number of top-1 points" in err and "Traceback" not in err
