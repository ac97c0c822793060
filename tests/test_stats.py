"""pekd.report.stats against scipy and hand computations: the intervals, tests and corrections the report's verdicts
rest on must be the textbook ones, not look-alikes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from pekd.report import stats


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


def _decided(n: int, diff: float, p: float | None, test: str = "t", **extra: object) -> dict[str, object]:
    return {"n": n, "mean_diff": diff, "p_holm": p, "test": test, "level": 0.05, "margin": 0.5, "p_tost_holm": None,
            "mde": None, **extra}


@pytest.mark.parametrize(("comparison", "expected"), [
    (_decided(8, 1.0, 0.012), "A > B: supported at 5% (Holm p=0.012)"),
    (_decided(8, -1.0, 0.012), "A > B: reversed at 5% (Holm p=0.012)"),
    (_decided(8, 0.1, 0.41, p_tost_holm=0.003), "A > B: equivalent within ±0.5 points at 5% (TOST Holm p=0.003)"),
    (_decided(8, 0.1, 0.41, p_tost_holm=0.2, mde=1.234), "A > B: not supported at 5% (Holm p=0.41; could have seen ≥ "
     "1.23 points)"),
    (_decided(5, 1.0, 0.0625, "perm"), "A > B: not supported at 5% (Holm p=0.0625; 5 paired seeds cannot give p "
     "below 0.0625, so no effect could have been seen)"),
    (_decided(1, 1.0, None), "not enough paired seeds (n=1)"),
])
def test_verdict_sentences(comparison: dict[str, object], expected: str) -> None:
    assert stats.verdict("A", "B", comparison) == expected


def test_detectable_effect_has_the_stated_power_by_simulation() -> None:
    """At the effect min_detectable_effect returns, the paired t-test at the level rejects 80% of the time: checked
    by simulating normal differences and scipy's t-test, independent of the noncentral-t formula."""
    n, std, level = 6, 0.8, 0.05 / 3
    mde = stats.min_detectable_effect(std, n, level)
    rng = np.random.default_rng(0)
    diffs = rng.normal(mde, std, size=(40_000, n))
    power = np.mean(sps.ttest_1samp(diffs, 0.0, axis=1).pvalue < level)
    assert power == pytest.approx(0.80, abs=0.01)
    # many pairs: the normal approximation (z_{1-level/2} + z_{0.8}) * std / sqrt(n)
    z = sps.norm.ppf(1 - level / 2) + sps.norm.ppf(0.8)
    assert stats.min_detectable_effect(std, 400, level) == pytest.approx(z * std / 20, rel=0.01)
    assert stats.min_detectable_effect(std, 5, level) > mde > stats.min_detectable_effect(std, 8, level)
    with pytest.raises(ValueError):
        stats.min_detectable_effect(0.0, 5, level)


def test_tost_is_the_larger_of_scipys_one_sided_tests() -> None:
    diffs = [0.1, -0.2, 0.15, 0.05, -0.1, 0.2]
    above = sps.ttest_1samp(diffs, -0.5, alternative="greater").pvalue
    below = sps.ttest_1samp(diffs, 0.5, alternative="less").pvalue
    assert stats.tost_p(diffs, 0.5) == pytest.approx(max(above, below), rel=1e-12) and max(above, below) < 0.001
    assert stats.tost_p([1.2, 0.9, 1.1, 1.0], 0.5) > 0.5  # a clear effect of 1 point is not equivalent within 0.5
    assert stats.tost_p([0.3, 0.3], 0.5) is None and stats.tost_p([0.1], 0.5) is None


def _made(a: str, diffs: list[float], p_perm: float, p_ttest: float | None) -> dict[str, object]:
    return {"a": a, "b": "B", "n": len(diffs), "mean_diff": float(np.mean(diffs)), "metric": "best_top1",
            "best_top1": {"diffs": [[s, d] for s, d in enumerate(diffs)]}, "p_perm": p_perm, "p_ttest": p_ttest}


def test_decide_gives_every_negative_a_size() -> None:
    """Holm across three claims; the detectable effect at 0.05/3; TOST Holm-adjusted across the same three."""
    big = [2.1, 1.8, 2.3, 1.9, 2.2, 2.0]
    flat = [0.1, -0.2, 0.15, 0.05, -0.1, 0.2]
    wide = [1.5, -1.2, 0.8, -0.4, 1.1, -0.6]
    made = [_made(a, d, stats.sign_flip_p(d), sps.ttest_1samp(d, 0).pvalue)
            for a, d in (("big", big), ("flat", flat), ("wide", wide))]
    stats.decide(made, "t", margin=0.5)
    first, second, third = made
    assert [c["p_holm"] for c in made] == pytest.approx(stats.holm([c["p_ttest"] for c in made]))
    assert first["verdict"] == f"big > B: supported at 5% (Holm p={stats.fmt_p(first['p_holm'])})"
    tost = [stats.tost_p(d, 0.5) for d in (big, flat, wide)]
    assert [c["p_tost_holm"] for c in made] == pytest.approx(stats.holm(tost))
    assert second["verdict"].startswith("flat > B: equivalent within ±0.5 points at 5% (TOST Holm p=")
    mde = stats.min_detectable_effect(float(np.std(wide, ddof=1)), 6, 0.05 / 3)
    assert third["mde"] == pytest.approx(mde) and third["level"] == pytest.approx(0.05 / 3)
    assert third["verdict"] == f"wide > B: not supported at 5% (Holm p={stats.fmt_p(third['p_holm'])}; could have " \
        f"seen ≥ {mde:.2f} points)"
    # the sign-flip test with 6 seeds cannot reach 0.05/3 (its floor is 2/64): no effect size could be seen
    again = [_made(a, d, stats.sign_flip_p(d), None) for a, d in (("big", big), ("flat", flat), ("wide", wide))]
    stats.decide(again, "perm", margin=0.5)
    assert again[2]["mde"] is None and "6 paired seeds cannot give p below 0.0312" in again[2]["verdict"]


def test_a_p_value_never_rounds_across_the_threshold() -> None:
    assert stats.fmt_p(0.049951) == "0.04995" and stats.fmt_p(0.0501) == "0.0501" and stats.fmt_p(0.012) == "0.012"
