"""pekd.stats against scipy and hand computations: the intervals, tests and corrections the report's verdicts rest
on must be the textbook ones, not look-alikes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from pekd import stats


def test_summary_matches_scipy_t_interval() -> None:
    values = [71.2, 70.4, 72.9, 71.8, 70.1]
    s = stats.summary(values)
    low, high = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert s["n"] == 5 and s["mean"] == pytest.approx(np.mean(values))
    assert s["std"] == pytest.approx(np.std(values, ddof=1))
    assert s["ci"] == pytest.approx([low, high]) and s["ci_half"] == pytest.approx((high - low) / 2)
    assert stats.summary([70.0]) == {"n": 1, "mean": 70.0, "std": None, "ci": None, "ci_half": None}
    assert stats.summary([])["mean"] is None


def test_sign_flip_exact_by_hand() -> None:
    # 16 sign patterns of [1, 2, 3, 4]: only all-plus and all-minus reach |sum| = 10
    assert stats.sign_flip_p([1, 2, 3, 4]) == 2 / 16
    # |sum| >= 8 also for [-1, 2, 3, 4] and its mirror (sum 8): 4 of 16
    assert stats.sign_flip_p([-1, 2, 3, 4]) == 4 / 16
    assert stats.sign_flip_p([0.0, 0.0, 0.0]) == 1.0  # no difference at all
    assert stats.sign_flip_p([0.1, 0.2, 0.3, -0.6]) == 1.0  # ties in exact arithmetic, not in floating point


def test_sign_flip_matches_scipy_permutation_test() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(70, 1, 9)
    b = a - rng.normal(0.4, 1, 9)
    ref = sps.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                               alternative="two-sided", n_resamples=np.inf)
    assert stats.sign_flip_p(a - b) == pytest.approx(ref.pvalue, rel=1e-12)


def test_sign_flip_beyond_exact_is_a_fixed_random_sample() -> None:
    rng = np.random.default_rng(4)
    d = rng.normal(0.3, 1, 20)  # 2^20 patterns: 20,000 random ones, the observed one counted
    p = stats.sign_flip_p(d)
    assert p == stats.sign_flip_p(d)  # the same report twice gives the same p
    exact_t = sps.ttest_1samp(d, 0).pvalue
    assert abs(p - exact_t) < 0.05  # close to the t-test on near-normal data
    assert stats.sign_flip_p(np.full(20, 1.0)) == 1 / (stats.N_RANDOM + 1)


def test_paired_matches_scipy_ttest_rel() -> None:
    a = [72.1, 71.4, 73.0, 72.2, 71.9, 72.6]
    b = [71.0, 71.1, 71.9, 71.8, 70.6, 71.9]
    out = stats.paired(a, b)
    diffs = np.subtract(a, b)
    assert out["n"] == 6 and out["mean_diff"] == pytest.approx(diffs.mean())
    low, high = sps.t.interval(0.95, 5, loc=diffs.mean(), scale=sps.sem(diffs))
    assert out["ci"] == pytest.approx([low, high])
    assert out["p_ttest"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert out["p_perm"] == 2 / 64  # every difference positive: only the observed signs and their mirror
    same = stats.paired([70.0, 71.0], [70.0, 71.0])
    assert same["p_perm"] == 1.0 and same["p_ttest"] is None  # zero spread: the t statistic is undefined
    one = stats.paired([70.0], [69.0])
    assert one["mean_diff"] == 1.0 and one["ci"] is None and one["p_perm"] is None


def test_holm_by_hand() -> None:
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06; back in input order
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.02]) == [0.02] and stats.holm([]) == []


def test_min_sign_flip_p_is_attained() -> None:
    assert stats.min_sign_flip_p(5) == 0.0625 == stats.sign_flip_p([1.0] * 5)
    assert stats.min_sign_flip_p(6) == 0.03125 < 0.05


@pytest.mark.parametrize(("p", "diff", "n", "expected"), [
    (0.012, 1.0, 8, "A > B: supported at 5% (Holm p=0.012)"),
    (0.012, -1.0, 8, "A > B: not supported at 5% (the difference goes the other way, significantly)"),
    (0.41, 1.0, 8, "A > B: not supported at 5% (Holm p=0.41)"),
    (0.0625, 1.0, 5, "A > B: not supported at 5% (Holm p=0.0625; 5 paired seeds cannot give p below 0.0625)"),
    (None, 1.0, 1, "not enough paired seeds (n=1)"),
])
def test_verdict_sentences(p: float | None, diff: float, n: int, expected: str) -> None:
    assert stats.verdict("A", "B", {"n": n, "mean_diff": diff, "p_holm": p}) == expected


def test_a_p_value_never_rounds_across_the_threshold() -> None:
    assert stats.fmt_p(0.049951) == "0.04995" and stats.fmt_p(0.0501) == "0.0501" and stats.fmt_p(0.012) == "0.012"
