"""pekd.report --along KEY: the report's rows, claims and mechanism at every value of a key (data.subset,
trainer.epochs, method.beta, ...), so a claim reads as a curve instead of a point.

Runs are split by their value of the key(s) first; each value is a report of its own (rows labelled among
themselves, comparisons paired by seed within the value only -- never a seed of one budget against the same seed
of another), and Holm's correction then runs across every comparison of every value, since a reader of the curve
reads all of them. Without --along the whole root is one point with no values, the plain report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pekd.errors import PekdError
from pekd.report import stats
from pekd.report.labels import group_rows, natural
from pekd.report.runs import NOT_EXPERIMENT, Row, Run, claims, compare, mechanism

# analysis.json keys of the mechanism tables and plots (pekd.analyze / trainer.analyze): column head, decimals
MECHANISM = {"train_test_gap": ("train − test gap (points)", 2), "student_cka": ("student CKA", 3),
             "projector_cka": ("projector CKA", 3), "student_ece": ("student ECE (%)", 2),
             "student_overconfidence": ("overconfidence (points)", 2),
             "projector_dead_fraction": ("dead projector units (fraction)", 3),
             "projector_cos_distance": ("projection 1 − cos", 4), "student_cos_distance": ("student 1 − cos", 4),
             "projected_logits_test_top1": ("projected logits top-1 (%)", 2)}


@dataclass
class Point:
    """One value of the --along key(s) (empty without --along) and the report made of its runs."""

    values: dict[str, Any]
    rows: list[Row]
    comparisons: list[dict[str, Any]]
    mechanism: list[dict[str, Any]]


def along_value(run: Run, key: str) -> Any:
    """The run's value of key; data.subset=0 (every training image) as the number of images it trained on."""
    value = run.config.get(key)
    if key == "data.subset" and value == 0:
        n = (run.results.get("train_set") or {}).get("n")
        return n if isinstance(n, int) else value
    return value


def _sort_key(values: tuple[Any, ...]) -> list[Any]:
    return [(0, float(v), "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0.0, str(v))
            for v in values]


def points(runs: list[Run], keys: list[str], specs: list[str] | None, test: str,
           margin: float = stats.MARGIN) -> list[Point]:
    """The report at every value of keys, in increasing order; Holm across all their comparisons, each with its
    detectable effect and an equivalence test at ±margin points (pekd.report.stats.decide)."""
    with_config = [r for r in runs if r.config]
    for key in keys:
        if not any(key in r.config for r in with_config):
            varying = sorted(k for k in {k for r in with_config for k in r.config}
                             if len({repr(r.config.get(k)) for r in with_config}) > 1 and k not in NOT_EXPERIMENT)
            raise PekdError(f"--along {key}: no run has that key; keys that vary among these runs: "
                            + (", ".join(varying) or "none"))
    groups: dict[tuple[Any, ...], list[Run]] = {}
    for run in with_config:
        groups.setdefault(tuple(along_value(run, k) for k in keys), []).append(run)
    out, made = [], []
    for values in sorted(groups, key=_sort_key):
        rows = group_rows(groups[values])
        at = dict(zip(keys, values, strict=True))
        comps = [compare(a, b) for a, b in claims(rows, specs, skip_missing=bool(keys))]
        for c in comps:
            c["along"] = at
        made += comps
        out.append(Point(at, rows, comps, mechanism(rows, MECHANISM)))
    if keys and specs:
        asked = {spec.replace(" ", "") for spec in specs}
        found = {f"{c['a']}>{c['b']}".replace(" ", "") for c in made}
        if missing := sorted(asked - found):
            labels = sorted({r.label for p in out for r in p.rows}, key=natural)
            raise PekdError(f"--compare {missing[0]!r} names rows that no value of --along {' '.join(keys)} has; the "
                            "labels are: " + "; ".join(repr(label) for label in labels))
    stats.decide(made, test, margin)
    return out


def is_log(xs: list[float]) -> bool:
    """A log axis where the values are positive and span a decade or more."""
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 10 and all(math.isfinite(x) for x in xs)


def fmt_along(values: dict[str, Any]) -> str:
    """`subset=500 epochs=24`: the last component of each key, as labels name keys."""
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())
