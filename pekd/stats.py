"""What a sweep is made of and the statistics pekd.report states its verdicts with: runs (one training seed each)
form rows (one experiment over seeds) and families (rows that may be compared by seed); a mean's confidence
interval over seeds, a paired comparison of two rows by training seed, Holm's correction across the comparisons a
report shows, and a verdict. pekd.report reads the run directories and writes the tables and the plot.

Seeds are few (3-10), so intervals use Student's t, and the verdict's test is an exact sign-flip permutation test
of the paired differences: it assumes only that, under "no difference", a seed's A - B is as likely to be
negative as positive, which the t-test's normality does not give with five values. The t-test's p is computed too
(scipy.stats.ttest_rel), for readers who expect it. One consequence a reader must know: with n paired seeds the
exact test cannot give a two-sided p below 2 / 2^n (n=5: 0.0625), so five seeds can never support a claim at 5%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from pekd.engine.rundir import RESUMABLE_CHANGES
from pekd.errors import PekdError

LEVEL = 0.95  # every interval is a 95% interval
MAX_EXACT = 16  # up to 2^16 sign patterns are enumerated; beyond, a fixed-seed random sample of them
N_RANDOM = 20_000
RANDOM_SEED = 0  # the same data gives the same p on every run of the report
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
        value = self.runs[0].config.get("paper_top1") or 0.0
        return float(value) if value > 0 else None

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


def t_halfwidth(std: float, n: int) -> float:
    """Half-width of the 95% t interval of a mean of n values with sample standard deviation std."""
    return float(sps.t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample std, 95% CI [low, high] of the mean and its half-width; std and CI are None below two
    values."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci": None, "ci_half": None}
    mean = float(np.mean(values))
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci": None, "ci_half": None}
    std = float(np.std(values, ddof=1))
    half = t_halfwidth(std, n)
    return {"n": n, "mean": mean, "std": std, "ci": [mean - half, mean + half], "ci_half": half}


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Two-sided p of the paired sign-flip permutation test: the fraction of sign patterns whose |sum| is at
    least the observed |sum|, the observed pattern included (so p > 0). Exact up to MAX_EXACT values."""
    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n > MAX_EXACT:
        signs = np.random.default_rng(RANDOM_SEED).choice([-1.0, 1.0], size=(N_RANDOM, n))
    else:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
    sums = np.abs(signs @ d)
    observed = abs(float(d.sum()))
    # sums equal in exact arithmetic may differ in the last bits: count them as ties, as scipy does
    ties = np.count_nonzero(sums >= observed - 1e-12 * float(np.abs(d).sum()))
    if n > MAX_EXACT:
        return (ties + 1) / (N_RANDOM + 1)
    return ties / len(sums)


def min_sign_flip_p(n: int) -> float:
    """The smallest two-sided p the exact test can give with n pairs: only the observed signs and their mirror."""
    return 2.0 / 2**n if n <= MAX_EXACT else 1.0 / (N_RANDOM + 1)


def seeds_needed(comparisons: int, alpha: float = 0.05) -> int:
    """The fewest paired seeds with which the best of `comparisons` claims can pass Holm at alpha (its p is
    multiplied by their number): 6 for one claim, 9 for ten."""
    n = 1
    while comparisons * min_sign_flip_p(n) >= alpha:
        n += 1
    return n


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """A - B paired by position: n, mean difference, its 95% t CI, the sign-flip p and the paired t-test p.

    Below two pairs there is no spread to test against: everything but the mean is None. The t-test's p is None
    when every difference is the same (zero spread: the t statistic is undefined)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    s = summary(diffs)
    out = {"n": s["n"], "mean_diff": s["mean"], "ci": s["ci"], "p_perm": None, "p_ttest": None}
    if s["n"] >= 2:
        out["p_perm"] = sign_flip_p(diffs)
        if s["std"] > 0:
            out["p_ttest"] = float(sps.ttest_rel(a, b).pvalue)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment, in the input's order: the i-th smallest p times (m - i + 1), made monotone
    (never below an adjusted p of a smaller raw p) and capped at 1. Controls the chance of any false claim."""
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


TESTS = {"perm": "p_perm", "t": "p_ttest"}


def fmt_p(p: float, alpha: float = 0.05) -> str:
    """3 significant digits, more where rounding would put p on the other side of alpha (0.0499 is not 0.05)."""
    for digits in range(3, 8):
        text = f"{p:.{digits}g}"
        if (float(text) < alpha) == (p < alpha):
            return text
    return repr(p)  # --test: which p the verdicts (and Holm) use


def verdict(a: str, b: str, comparison: dict[str, Any], alpha: float = 0.05, test: str = "perm") -> str:
    """The plain sentence for the claim "a > b" from a comparison with its Holm-adjusted p (p_holm)."""
    n = comparison["n"]
    if n < 2:
        return f"not enough paired seeds (n={n})"
    claim = f"{a} > {b}: "
    p = comparison["p_holm"]
    if p < alpha:
        if comparison["mean_diff"] > 0:
            return claim + f"supported at {alpha:.0%} (Holm p={fmt_p(p, alpha)})"
        return claim + f"not supported at {alpha:.0%} (the difference goes the other way, significantly)"
    floor = min_sign_flip_p(n)
    limit = f"; {n} paired seeds cannot give p below {floor:.3g}" if test == "perm" and floor >= alpha else ""
    return claim + f"not supported at {alpha:.0%} (Holm p={fmt_p(p, alpha)}{limit})"


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


def comparisons(rows: list[Row], specs: list[str] | None, test: str = "perm") -> list[dict[str, Any]]:
    """Paired comparisons with Holm's correction across all of them that have a p, and a verdict each.

    test="perm": the exact sign-flip test (no assumption on the differences' distribution, but with n seeds no p
    below 2/2^n); test="t": the paired t-test, the one the CI shown is built from (it assumes roughly normal
    differences). Where every difference is equal the t statistic is undefined and the sign-flip p stands in."""
    return decide([compare(a, b) for a, b in claims(rows, specs)], test)


def decide(made: list[dict[str, Any]], test: str = "perm") -> list[dict[str, Any]]:
    """Holm across every comparison in `made` that has a p (pekd.report --along: across every value too), then a
    verdict each."""
    tested = [c for c in made if c["p_perm"] is not None]
    chosen = [c[TESTS[test]] if c[TESTS[test]] is not None else c["p_perm"] for c in tested]
    for c, p in zip(tested, holm(chosen), strict=True):
        c["p_holm"] = p
    for c in made:
        c["test"] = test
        c["verdict"] = verdict(c["a"], c["b"], c, test=test)
    return made


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
