"""report.json and report.csv: report.md's numbers, unrounded, with every seed's values, for scripts.

report.csv is long-format -- one number per line, `pandas.read_csv` ready: section (row | comparison |
mechanism), one column per --along key, label (the row, or "A > B"), seed (for per-seed lines), metric,
statistic (n, mean, std, ci_low, ci_high, value, mean_diff, diff, p_ttest, p_perm, p_holm, mde, p_tost, p_tost_holm,
verdict), value, and note (the verdict's sentence; empty otherwise). mde is the detectable effect in points and
p_tost the equivalence test's p at the margin (pekd.report.stats.decide). Filter it rather than parse report.md.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pekd.report import stats
from pekd.report.along import MECHANISM, Point
from pekd.report.runs import METRICS, NOT_EXPERIMENT, Run

TESTS_TEXT = {"t": "paired t-test (scipy.stats.ttest_rel)",
              "perm": "two-sided sign-flip permutation test (exact up to 16 seeds)"}


def report_json(root: Path, pts: list[Point], keys: list[str], flagged: list[Run],
                test: str = "perm") -> dict[str, Any]:
    """Flat lists of rows, comparisons and mechanism rows, each with its --along values (`along`) when keys."""
    def along(p: Point) -> dict[str, Any]:
        return {"along": p.values} if keys else {}

    def where(r: Run) -> str:  # relative to the root, so a report moved or committed with its runs still points at them
        return str(r.path.relative_to(root)) if r.path.is_relative_to(root) else str(r.path)

    return {
        "root": str(root),
        "along": keys,
        "test": TESTS_TEXT[test] + " of paired best_top1 differences decides the verdicts; Holm across the "
                "comparisons with a p" + (" at every value" if keys else "") + "; p_perm and p_ttest are both "
                "given; mde: the difference the paired t-test at alpha/m finds with 80% power; p_tost: two "
                "one-sided t-tests of equivalence within ±margin points, Holm-adjusted as p_tost_holm",
        "rows": [{"label": row.label, **along(p), "paper_top1": row.paper(),
                  "config": {k: v for k, v in row.runs[0].config.items() if k not in NOT_EXPERIMENT},
                  "runs": [{"path": where(r), "seed": r.config.get("seed"), "status": r.status,
                            **{m: r.value(m) for m in METRICS}} for r in row.runs],
                  **{m: stats.summary(row.values(m)) for m in METRICS}} for p in pts for row in p.rows],
        "comparisons": [c for p in pts for c in p.comparisons],
        "mechanism": [{**m, **along(p)} for p in pts for m in p.mechanism],
        "flagged": [{"path": where(r), "status": r.status, "error": r.results.get("error")} for r in flagged],
    }


def _summary_lines(s: dict[str, Any]) -> list[tuple[str, Any]]:
    ci = s.get("ci") or [None, None]
    return [("n", s["n"]), ("mean", s["mean"]), ("std", s["std"]), ("ci_low", ci[0]), ("ci_high", ci[1])]


def report_csv(pts: list[Point], keys: list[str]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", *keys, "label", "seed", "metric", "statistic", "value", "note"])

    def line(section: str, p: Point, label: str, seed: Any, metric: str, statistic: str, value: Any,
             note: str = "") -> None:
        w.writerow([section, *(p.values[k] for k in keys), label, "" if seed is None else seed, metric, statistic,
                    "" if value is None else value, note])

    for p in pts:
        for row in p.rows:
            for m in METRICS:
                for stat, v in _summary_lines(stats.summary(row.values(m))):
                    line("row", p, row.label, None, m, stat, v)
                for r in row.completed():
                    line("row", p, row.label, r.config.get("seed"), m, "value", r.value(m))
        for c in p.comparisons:
            claim = f"{c['a']} > {c['b']}"
            for m in METRICS:
                d = c[m]
                ci = d["ci"] or [None, None]
                for stat, v in (("n", d["n"]), ("mean_diff", d["mean_diff"]), ("ci_low", ci[0]), ("ci_high", ci[1])):
                    line("comparison", p, claim, None, m, stat, v)
                for seed, diff in d["diffs"]:
                    line("comparison", p, claim, seed, m, "diff", diff)
            for stat in ("p_ttest", "p_perm", "p_holm", "mde", "p_tost", "p_tost_holm"):
                line("comparison", p, claim, None, c["metric"], stat, c[stat])
            line("comparison", p, claim, None, c["metric"], "verdict", None, c["verdict"])
        for mech in p.mechanism:
            for k in MECHANISM:
                if mech[k]["n"]:
                    for stat, v in _summary_lines(mech[k]):
                        line("mechanism", p, mech["label"], None, k, stat, v)
                    for seed, v in mech[k]["values"]:
                        line("mechanism", p, mech["label"], seed, k, "value", v)
    return out.getvalue()
