"""What a sweep is made of, for pekd.report: runs (one training seed each) form rows (one experiment over seeds)
and families (rows that may be compared by seed); a paired comparison of two rows by training seed, the claims to
compare, and the mechanism diagnostics of a row. The numbers themselves come from pekd.report.stats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from pekd.engine.rundir import RESUMABLE_CHANGES
from pekd.errors import PekdError
from pekd.report.paper import published
from pekd.report.stats import paired, summary

METRICS = ("best_top1", "last_top1")  # results.json fields, percent
VERDICT_METRIC = "best_top1"  # the figure papers report, and the headline of every table of the report
# Keys that do not make two runs different experiments: the seed (what a repeat varies), and what may change on
# resumption.
NOT_EXPERIMENT = RESUMABLE_CHANGES | {"seed", "trainer.threads"}
# Keys two rows of one family may differ in: the method under test, labels, and how the teacher's signal arrives
# (a feature bank is tested to compute what the online teacher computes).
FAMILY_FREE_KEYS = {"name", "paper_top1", "teacher.mode", "teacher.bank"}
FAMILY_FREE_PREFIXES = ("method.", "bank.")


@dataclass
class Run:
    path: Path
    status: str  # completed | running | preempted | stopped | failed | no results | not started
    config: dict[str, Any] = field(default_factory=dict)  # flattened
    results: dict[str, Any] = field(default_factory=dict)
    analysis: dict[str, Any] = field(default_factory=dict)  # analysis.json of pekd.analyze, where present

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, repr(v)) for k, v in self.config.items() if k not in NOT_EXPERIMENT))

    def value(self, name: str) -> float | None:
        """A results.json number, None where it is missing or not finite."""
        v = self.results.get(name)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


@dataclass
class Row:
    label: str
    runs: list[Run]

    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    def values(self, name: str) -> list[float]:
        return [v for r in self.completed() if (v := r.value(name)) is not None]

    def paper(self) -> float | None:
        """The top-1 published for this row's recipe and method (pekd.report.paper), None where none is recorded."""
        return published(self.runs[0].config)

    def family(self, teacher: bool = True) -> tuple[tuple[str, str], ...]:
        """The keys rows must share to be compared by seed (with or without the teacher's)."""
        return tuple((k, v) for k, v in self.runs[0].key
                     if not family_free(k) and (teacher or not k.startswith("teacher.")))

    def comparable(self, other: Row) -> bool:
        """One family; or one of the two trains without a teacher (the CE baseline of a distillation) and they
        agree on everything but the teacher."""
        if self.family() == other.family():
            return True
        teacherless = "none" in (self.runs[0].config.get("teacher.mode"), other.runs[0].config.get("teacher.mode"))
        return teacherless and self.family(teacher=False) == other.family(teacher=False)


def family_free(key: str) -> bool:
    return key in FAMILY_FREE_KEYS or key.startswith(FAMILY_FREE_PREFIXES)


def _by_seed(row: Row) -> tuple[dict[Any, Run], set[Any]]:
    """The row's completed runs by training seed, and the seeds completed twice (ambiguous: paired with nothing)."""
    seeds = [r.config.get("seed") for r in row.completed()]
    twice = {s for s in seeds if seeds.count(s) > 1}
    return {r.config.get("seed"): r for r in row.completed() if r.config.get("seed") not in twice}, twice


def compare(a: Row, b: Row) -> dict[str, Any]:
    """A - B over the seeds both rows completed on the same evaluation images; every other seed is listed."""
    (runs_a, twice_a), (runs_b, twice_b) = _by_seed(a), _by_seed(b)
    seeds, unpaired = [], []
    for seed in sorted(runs_a.keys() | runs_b.keys() | twice_a | twice_b, key=lambda s: (str(type(s)), s)):
        ra, rb = runs_a.get(seed), runs_b.get(seed)
        if seed in twice_a | twice_b:
            unpaired.append(f"seed {seed} completed by more than one run of {(a if seed in twice_a else b).label}")
        elif ra is None or rb is None:
            other = b if ra is not None else a
            state = [r.status for r in other.runs if r.config.get("seed") == seed]
            unpaired.append(f"seed {seed} missing in {other.label}" + (f" ({state[0]})" if state else ""))
        elif ra.results.get("eval_set") != rb.results.get("eval_set"):
            unpaired.append(f"seed {seed}: evaluated on different images (eval_set differs)")
        else:
            seeds.append(seed)
    out: dict[str, Any] = {"a": a.label, "b": b.label, "seeds": seeds, "unpaired": unpaired}
    for metric in METRICS:
        pairs = [(s, x, y) for s in seeds if (x := runs_a[s].value(metric)) is not None
                 and (y := runs_b[s].value(metric)) is not None]
        out[metric] = paired([x for _, x, _ in pairs], [y for _, _, y in pairs])
        out[metric]["diffs"] = [[s, x - y] for s, x, y in pairs]  # [seed, A - B]: what the plots show per seed
    head = out[VERDICT_METRIC]
    out.update(metric=VERDICT_METRIC, n=head["n"], mean_diff=head["mean_diff"], p_perm=head["p_perm"],
               p_ttest=head["p_ttest"], p_holm=None)
    return out


def claims(rows: list[Row], specs: list[str] | None, skip_missing: bool = False) -> list[tuple[Row, Row]]:
    """The comparisons to make: the claims asked for ("A>B", labels as printed), else every comparable pair (one
    family, or a teacherless baseline) with A the row of the higher mean (the claim the data suggest; Holm
    accounts for every pair tested). skip_missing: a claim whose rows are not all here is left out (pekd.report
    --along asks every claim at every value; claim_labels checks that each exists somewhere)."""
    by_label = {r.label: r for r in rows}
    if not specs:
        pairs = []
        for a, b in combinations(rows, 2):
            if a.comparable(b):
                mean_a, mean_b = (_mean_or_low(r.values(VERDICT_METRIC)) for r in (a, b))
                pairs.append((b, a) if mean_b > mean_a else (a, b))
        return pairs
    out = []
    for spec in specs:
        splits = [(spec[:i].strip(), spec[i + 1:].strip()) for i, c in enumerate(spec) if c == ">"]
        known = [(x, y) for x, y in splits if x in by_label and y in by_label]
        if not known and skip_missing:
            continue
        if not known:
            raise PekdError(f"--compare {spec!r} is not 'A>B' of two row labels; the labels are: "
                            + "; ".join(repr(label) for label in by_label))
        a, b = by_label[known[0][0]], by_label[known[0][1]]
        if a is b or not a.comparable(b):
            fa, fb = dict(a.family()), dict(b.family())
            differ = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)) or ["nothing (one row)"]
            raise PekdError(f"--compare {spec!r}: the rows must differ only in the method or the teacher's "
                            f"delivery, but they differ in {', '.join(differ)}")
        out.append((a, b))
    return out


def _mean_or_low(values: list[float]) -> float:
    return float(np.mean(values)) if values else -math.inf


def mechanism(rows: list[Row], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and CI over a row's completed seeds of each analysis.json diagnostic in keys (pekd.analyze writes
    them; any may be missing or null); rows without any analysis.json are left out."""
    out = []
    for row in rows:
        analysed = [r for r in row.completed() if r.analysis]
        if analysed:
            cells = {}
            for k in keys:
                seeds = [[r.config.get("seed"), float(v)] for r in analysed
                         if isinstance(v := r.analysis.get(k), int | float) and math.isfinite(v)]
                cells[k] = {**summary([v for _, v in seeds]), "values": seeds}  # [seed, value]: the plots' points
            out.append({"label": row.label, "runs": len(analysed), **cells})
    return out
