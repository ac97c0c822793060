"""The statistics pekd.report states its verdicts with: a mean's confidence interval over seeds, a paired comparison
by training seed, Holm's correction across the comparisons a report shows, the size of effect a comparison could
have detected, an equivalence test, and the verdict sentence. What the numbers are made of (runs, rows, families)
is pekd.report.runs.

Seeds are few (3-10), so intervals use Student's t, and the default verdict's test is an exact sign-flip
permutation test of the paired differences: it assumes only that, under "no difference", a seed's A - B is as
likely to be negative as positive, which the t-test's normality does not give with five values. The t-test's p is
computed too (scipy.stats.ttest_rel), for readers who expect it. One consequence a reader must know: with n paired
seeds the exact test cannot give a two-sided p below 2 / 2^n (n=5: 0.0625), so five seeds can never support a claim
at 5%.

A claim that is not supported is not thereby shown false: each comparison also states the smallest effect it could
have detected (min_detectable_effect) and whether the difference is equivalent to zero within a margin the reader
sets (tost_p), so a negative result has a size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps

LEVEL = 0.95  # every interval is a 95% interval
MAX_EXACT = 16  # up to 2^16 sign patterns are enumerated; beyond, a fixed-seed random sample of them
N_RANDOM = 20_000
RANDOM_SEED = 0  # the same data gives the same p on every run of the report
ALPHA = 0.05  # the verdicts' family-wise error rate (Holm)
POWER = 0.80  # the power a detectable effect is stated at
MARGIN = 0.5  # default equivalence margin, top-1 points (pekd.report --margin)


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


TESTS = {"perm": "p_perm", "t": "p_ttest"}  # --test: which p the verdicts (and Holm) use


def fmt_p(p: float, alpha: float = 0.05) -> str:
    """3 significant digits, more where rounding would put p on the other side of alpha (0.0499 is not 0.05)."""
    for digits in range(3, 8):
        text = f"{p:.{digits}g}"
        if (float(text) < alpha) == (p < alpha):
            return text
    return repr(p)


def min_detectable_effect(std: float, n: int, level: float, power: float = POWER) -> float:
    """The smallest true mean difference (in the differences' unit) that the two-sided paired t-test at `level`
    detects with probability `power`, over n pairs whose differences have standard deviation std.

    Power at a true difference delta is P(|T| > t_crit) with T noncentral t (n - 1 degrees of freedom,
    noncentrality delta * sqrt(n) / std) and t_crit the t quantile at 1 - level / 2; the effect is where that
    power reaches `power`. std is the observed SD of the differences, itself uncertain with few seeds: the number
    says what this experiment could see, not what a replication would."""
    if n < 2 or not std > 0:
        raise ValueError(f"a detectable effect needs 2+ pairs with spread (n={n}, std={std})")
    df = n - 1
    crit = float(sps.t.ppf(1 - level / 2, df))

    def shortfall(delta: float) -> float:
        nc = delta * math.sqrt(n) / std
        # the lower tail as the mirrored upper tail: scipy's nct.cdf far below the mean can return nan
        return float(sps.nct.sf(crit, df, nc) + sps.nct.sf(crit, df, -nc)) - power

    high = std
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10 * std))


def tost_p(diffs: Sequence[float], margin: float) -> float | None:
    """Two one-sided paired t-tests (TOST) of "the mean difference lies within ±margin": the larger of the p of
    H0 mean <= -margin and of H0 mean >= +margin. Below it a difference is equivalent to zero within the margin.
    None below two pairs or without spread (the t statistic is undefined)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2 or not float(np.std(d, ddof=1)) > 0:
        return None
    above = sps.ttest_1samp(d, -margin, alternative="greater").pvalue
    below = sps.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(above, below))


def verdict(a: str, b: str, c: dict[str, Any], alpha: float = ALPHA) -> str:
    """The plain sentence for the claim "a > b" from a decided comparison (decide): supported, reversed,
    equivalent within the margin, or not supported with the effect it could have seen."""
    n = c["n"]
    if n < 2:
        return f"not enough paired seeds (n={n})"
    claim, p = f"{a} > {b}: ", c["p_holm"]
    if p < alpha:
        which = "supported" if c["mean_diff"] > 0 else "reversed"
        return claim + f"{which} at {alpha:.0%} (Holm p={fmt_p(p, alpha)})"
    if c["p_tost_holm"] is not None and c["p_tost_holm"] < alpha:
        return claim + (f"equivalent within ±{c['margin']:g} points at {alpha:.0%} "
                        f"(TOST Holm p={fmt_p(c['p_tost_holm'], alpha)})")
    floor = min_sign_flip_p(n)
    if c["test"] == "perm" and floor >= c["level"]:
        return claim + (f"not supported at {alpha:.0%} (Holm p={fmt_p(p, alpha)}; {n} paired seeds cannot give p "
                        f"below {floor:.3g}, so no effect could have been seen)")
    seen = f"; could have seen ≥ {c['mde']:.2f} points" if c["mde"] is not None else ""
    return claim + f"not supported at {alpha:.0%} (Holm p={fmt_p(p, alpha)}{seen})"


def decide(made: list[dict[str, Any]], test: str = "perm", margin: float = MARGIN,
           alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Holm across every comparison in `made` that has a p (pekd.report --along: across every value too), the
    detectable effect and the equivalence test of each, then a verdict each.

    The detectable effect (`mde`, points) is min_detectable_effect at `level` = alpha / m over the m comparisons
    with a p: Holm's strictest step, which it rejects at whatever the other comparisons show, so an effect that
    large would have been found with 80% power in any case. With the sign-flip test it is the t-test's figure (the
    two have near-equal power on near-normal differences), and none at all where n seeds cannot give a p below the
    level. Equivalence (`p_tost`) is TOST at ±margin on the verdict metric's differences, Holm-adjusted across the
    same m comparisons (`p_tost_holm`), and read only where the claim's own test is not significant."""
    tested = [c for c in made if c["p_perm"] is not None]
    chosen = [c[TESTS[test]] if c[TESTS[test]] is not None else c["p_perm"] for c in tested]
    for c, p in zip(tested, holm(chosen), strict=True):
        c["p_holm"] = p
    level = alpha / max(len(tested), 1)
    for c in made:
        diffs = [d for _, d in c[c["metric"]]["diffs"]]
        std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
        reachable = test == "t" or min_sign_flip_p(len(diffs)) < level
        c.update(test=test, level=level, margin=margin, p_tost=tost_p(diffs, margin), p_tost_holm=None,
                 mde=min_detectable_effect(std, len(diffs), level) if std > 0 and reachable else None)
    with_tost = [c for c in made if c["p_tost"] is not None]
    for c, p in zip(with_tost, holm([c["p_tost"] for c in with_tost]), strict=True):
        c["p_tost_holm"] = p
    for c in made:
        c["verdict"] = verdict(c["a"], c["b"], c, alpha)
    return made
