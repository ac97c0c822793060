"""report.png: every seed as a point, means with their 95% CIs.

Without --along: the rows' top-1 (one panel, or two when some run's best and last evaluations differ), the
students' range setting the axis -- a row outside every comparison (the demo's teacher) is drawn at the edge with
its value written, so it cannot squeeze the students' differences into a few pixels -- and a panel of the claims:
each comparison's per-seed paired differences, their mean and CI, against zero.

With --along: one panel per claim, its paired difference against the key (log scale where the values span a
decade or more) with the CI as a band and every seed's difference as a point; then one panel per mechanism
diagnostic against the key, a line per row.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from pekd.report import stats
from pekd.report.along import MECHANISM, Point, fmt_along, is_log
from pekd.report.runs import METRICS, VERDICT_METRIC, Row

PANEL_INCHES, GAP_INCHES = 4.0, 0.4  # one panel of the plot without --along, and the space between two
# names of --along keys on the plots' x axes (the key itself follows in parentheses); other keys show as they are
AXIS_NAMES = {"data.subset": "training images", "trainer.epochs": "epochs", "method.beta": "beta",
              "method.q": "projectors", "trainer.lr": "learning rate", "data.batch_size": "batch size"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _one_evaluation(rows: list[Row]) -> bool:
    """best and last are the same number for every run: a second panel would repeat the first."""
    return all(r.value("best_top1") == r.value("last_top1") for row in rows for r in row.completed())


def axis_range(rows: list[Row], compared: set[str], metric: str) -> tuple[float, float]:
    """The accuracy axis: the compared rows' seeds and CIs with a margin; other rows (a teacher) do not count."""
    seen = [v for r in rows if r.label in compared
            for v in [*r.values(metric), *(stats.summary(r.values(metric))["ci"] or [])]]
    lo, hi = (min(seen), max(seen)) if seen else (0.0, 100.0)
    margin = max(0.1 * (hi - lo), 0.5)
    return lo - margin, hi + margin


def plot(point: Point, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    rows, comps = point.rows, point.comparisons
    metrics = METRICS[:1] if _one_evaluation(rows) else METRICS
    compared = {label for c in comps for label in (c["a"], c["b"])} or {r.label for r in rows}
    panels = len(metrics) + bool(comps)
    # Every panel keeps its own size, however many rows and claims: the figure grows instead (0.45 in a line), and
    # the row and claim labels sit outside the panels (the saved image's tight box takes them in), never squeezing
    # them as a layout engine fitting long labels into a fixed figure would.
    height = 1.0 + 0.45 * max(len(rows), len(comps), 1)
    width = PANEL_INCHES * panels + GAP_INCHES * (panels - 1)
    fig, axes = plt.subplots(1, panels, squeeze=False, figsize=(width, height))
    fig.subplots_adjust(left=0.0, right=1.0, wspace=GAP_INCHES / PANEL_INCHES, bottom=0.7 / height,
                        top=1 - 0.1 / height)
    jitter = np.random.default_rng(0)  # the same picture for the same runs
    for ax, metric in zip(axes[0], metrics, strict=False):
        lo, hi = axis_range(rows, compared, metric)
        for y, row in enumerate(rows):
            values = row.values(metric)
            s = stats.summary(values)
            if row.label not in compared and values and not all(lo <= v <= hi for v in values):
                edge = hi if s["mean"] > hi else lo  # off the students' axis: at its edge, value written
                ax.plot(edge, y, ">" if edge == hi else "<", color="gray", ms=9, zorder=3)
                ax.annotate(f"{s['mean']:.2f}", (edge, y), xytext=(-6 if edge == hi else 6, 7),
                            textcoords="offset points", ha="right" if edge == hi else "left", fontsize=8)
                continue
            ax.scatter(values, y + jitter.uniform(-0.15, 0.15, len(values)), s=16, color="tab:blue", alpha=0.6,
                       label="one seed", zorder=2)
            if s["mean"] is not None:
                ax.errorbar(s["mean"], y, xerr=s["ci_half"] if s["ci"] else None, fmt="D", color="black",
                            ms=5, capsize=4, label="mean, 95% CI", zorder=3)
            paper = row.paper()
            if paper and metric == VERDICT_METRIC and lo <= paper <= hi:  # papers report the best epoch's top-1
                ax.plot(paper, y, "r*", ms=11, label="paper's top-1", zorder=4)
        ax.set_xlim(lo, hi)
        name = "top-1 (%), the one evaluation" if len(metrics) == 1 else f"{metric.replace('_top1', '')} top-1 (%)"
        ax.set_xlabel(name)
        ax.set_yticks(range(len(rows)), [r.label for r in rows])
        ax.tick_params(labelleft=ax is axes[0][0])  # the same rows in every panel: labelled once, at the left
        ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)  # first row on top, as in report.md
        ax.grid(axis="x", alpha=0.3)
    if comps:
        _claims_panel(axes[0][-1], comps, jitter)
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one legend entry per kind, not per row
    if unique:
        fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique), bbox_to_anchor=(0.5, 1.0))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _claims_panel(ax: Any, comps: list[dict[str, Any]], jitter: Any) -> None:
    """Each claim's per-seed paired differences (A − B), their mean and 95% CI, and zero."""
    for y, c in enumerate(comps):
        d = c[VERDICT_METRIC]
        diffs = [x for _, x in d["diffs"]]
        ax.scatter(diffs, y + jitter.uniform(-0.15, 0.15, len(diffs)), s=16, color="tab:orange", alpha=0.7, zorder=2)
        if d["mean_diff"] is not None:
            ax.errorbar(d["mean_diff"], y, xerr=(d["ci"][1] - d["mean_diff"]) if d["ci"] else None, fmt="D",
                        color="black", ms=5, capsize=4, zorder=3)
    ax.axvline(0.0, color="gray", lw=1)
    ax.set_yticks(range(len(comps)), [f"{c['a']} > {c['b']}" for c in comps])
    ax.yaxis.tick_right()
    ax.set_ylim(len(comps) - 0.5, -0.5)
    ax.set_xlabel(f"{VERDICT_METRIC.replace('_top1', '')} top-1, A − B per seed (points)")
    ax.grid(axis="x", alpha=0.3)


def plot_along(pts: list[Point], keys: list[str], path: Path) -> None:
    """Claims then mechanism diagnostics against keys[0]; the other keys' values (if any) are separate lines."""
    plt = _pyplot()
    key = keys[0]
    claims = sorted({f"{c['a']} > {c['b']}" for p in pts for c in p.comparisons})
    mech = [k for k in MECHANISM if any(m[k]["n"] for p in pts for m in p.mechanism)]
    panels = len(claims) + len(mech)
    cols = min(3, max(panels, 1))
    nrows = max(math.ceil(panels / cols), 1)
    fig, axes = plt.subplots(nrows, cols, squeeze=False, figsize=(5.2 * cols, 3.8 * nrows))
    flat = [ax for line in axes for ax in line]
    # the values something is drawn at (a teacher trained on every image is a value of its own, with nothing to draw)
    xs = [float(p.values[key]) for p in pts
          if isinstance(p.values[key], int | float) and (p.comparisons or p.mechanism)]
    for ax, claim in zip(flat, claims, strict=False):
        for series, group in _series(pts, keys).items():
            found = [(float(p.values[key]), c[VERDICT_METRIC]) for p in group for c in p.comparisons
                     if f"{c['a']} > {c['b']}" == claim and c[VERDICT_METRIC]["mean_diff"] is not None]
            if not found:
                continue
            line = ax.plot([x for x, _ in found], [d["mean_diff"] for _, d in found], "D-", ms=4,
                           label=series or "mean, 95% CI band")[0]
            band = [(x, d["ci"]) for x, d in found if d["ci"]]
            ax.fill_between([x for x, _ in band], [ci[0] for _, ci in band], [ci[1] for _, ci in band],
                            color=line.get_color(), alpha=0.2)
            ax.scatter([x for x, d in found for _ in d["diffs"]], [v for _, d in found for _, v in d["diffs"]],
                       s=12, color=line.get_color(), alpha=0.6, label="one seed" if not series else None)
        ax.axhline(0.0, color="gray", lw=1)
        ax.set_title(textwrap.fill(claim, 64), fontsize=9)
        ax.set_ylabel(f"{VERDICT_METRIC.replace('_top1', '')} top-1 A − B (points)", fontsize=8)
        _axis(ax, key, xs)
    # one colour per row (and series) in every mechanism panel, also in panels some rows have no value in
    every = [(label, series) for label in sorted({m["label"] for p in pts for m in p.mechanism})
             for series in _series(pts, keys)]
    colour = {row: f"C{i % 10}" for i, row in enumerate(every)}
    for ax, k in zip(flat[len(claims):], mech, strict=False):
        labels = sorted({m["label"] for p in pts for m in p.mechanism if m[k]["n"]})
        for label in labels:
            for series, group in _series(pts, keys).items():
                found = [(float(p.values[key]), m[k]) for p in group for m in p.mechanism
                         if m["label"] == label and m[k]["n"]]
                if not found:
                    continue
                line = ax.plot([x for x, _ in found], [s["mean"] for _, s in found], "o-", ms=4,
                               color=colour[(label, series)], label=f"{label} {series}".strip())[0]
                band = [(x, s["ci"]) for x, s in found if s["ci"]]
                ax.fill_between([x for x, _ in band], [ci[0] for _, ci in band], [ci[1] for _, ci in band],
                                color=line.get_color(), alpha=0.15)
                ax.scatter([x for x, s in found for _ in s["values"]], [v for _, s in found for _, v in s["values"]],
                           s=8, color=line.get_color(), alpha=0.5)
        ax.set_title(MECHANISM[k][0], fontsize=9)
        ax.legend(fontsize=7)
        _axis(ax, key, xs)
    if claims:
        flat[0].legend(fontsize=7)
    for ax in flat[panels:]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _series(pts: list[Point], keys: list[str]) -> dict[str, list[Point]]:
    """Points by their values of the keys after the first: one line each (one unnamed line with a single key)."""
    out: dict[str, list[Point]] = {}
    for p in pts:
        if isinstance(p.values[keys[0]], int | float):
            out.setdefault(fmt_along({k: p.values[k] for k in keys[1:]}), []).append(p)
    return out


def _axis(ax: Any, key: str, xs: list[float]) -> None:
    """The x axis of an --along panel: every panel the same range, a tick at each value the runs have (a log scale
    where they span a decade or more, without its minor ticks' labels), and the key by what it counts."""
    from matplotlib.ticker import NullLocator

    values = sorted(set(xs))
    if is_log(values):
        ax.set_xscale("log")
        ax.set_xlim(values[0] / 1.4, values[-1] * 1.4)
    elif values:
        pad = 0.08 * (values[-1] - values[0]) or 0.5 * abs(values[0]) or 1.0
        ax.set_xlim(values[0] - pad, values[-1] + pad)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(values, [f"{v:,g}" for v in values], rotation=45 if len(values) > 6 else 0, fontsize=8)
    name = AXIS_NAMES.get(key)
    ax.set_xlabel(f"{name} ({key})" if name else key, fontsize=8)
    ax.grid(alpha=0.3)
