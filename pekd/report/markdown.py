"""report.md: the rows with their CIs, the paired claims with p-values and verdicts, the mechanism, and the runs
that did not complete; with --along every table has a column per key, one line per value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pekd.report import stats
from pekd.report.along import MECHANISM, Point
from pekd.report.runs import METRICS, VERDICT_METRIC, Run
from pekd.teacher.bank_views import config_note

NEWER = ("projector_dead_fraction", "projector_cos_distance", "student_cos_distance", "projected_logits_test_top1")


def _ci(s: dict[str, Any], digits: int = 2) -> str:
    """mean ± half-width of its 95% CI; one value has no interval (–)."""
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.{digits}f} ± " + (f"{s['ci_half']:.{digits}f}" if s["ci"] else "–")


def _diff(d: dict[str, Any]) -> str:
    if d["mean_diff"] is None:
        return "–"
    return f"{d['mean_diff']:+.2f}" + (f" [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]" if d["ci"] else " [–]")


def _p(p: float | None) -> str:
    return "–" if p is None else stats.fmt_p(p)


def _mde(c: dict[str, Any]) -> str:
    return "–" if c["mde"] is None else f"{c['mde']:.2f}"


def markdown(root: Path, pts: list[Point], keys: list[str], flagged: list[Run], test: str = "perm",
             options: str | None = None) -> str:
    """report.md; `options`: where the options came from when the sweep's own file supplied them."""
    head = "".join(f" {k} |" for k in keys)  # the --along columns
    bar = "---:|" * len(keys)

    def at(p: Point) -> str:
        return "".join(f" {p.values[k]} |" for k in keys)

    lines = [f"# pekd report: {root}", ""]
    if options:
        lines += [f"Options from {options}: the sweep's own, fixed when it was planned; options typed on the command "
                  "line replace them.", ""]
    if not any(row.completed() for p in pts for row in p.rows):
        lines += ["No run completed: there is nothing to average, compare or plot. The runs and why they stopped "
                  "are listed below; fix the cause and rerun or resume them.", ""]
    if keys:
        lines += [f"Along {', '.join(keys)}: every value is a report of its own (rows, and comparisons paired by seed "
                  "within the value only); Holm's correction runs across every comparison of every value.", ""]
    lines += ["Mean over the seeds that completed ± the half-width of its 95% confidence interval (Student t); one "
              "seed gives no interval (–). Paper top-1: the top-1 published for the row's recipe and method, as its "
              "experiment config records it with the source (papers report the best epoch's top-1: compare it with "
              "the best column); \"not recorded\" where the config records none, or the run's method is not the "
              "one the number was published for.", "",
              f"| run |{head} seeds done | best top-1 (%) | last top-1 (%) | paper top-1 (%), best epoch | flags |",
              f"|---|{bar}---:|---:|---:|---:|---|"]
    for p in pts:
        for row in p.rows:
            note = config_note(row.runs[0].config)  # a bank of views that are not the online recipe's
            flags = ", ".join([*(f"{r.status}: {r.path.name}" for r in row.runs if r.status != "completed"),
                               *([note] if note else [])])
            cells = " | ".join(_ci(stats.summary(row.values(m))) for m in METRICS)
            paper = row.paper()
            lines.append(f"| {row.label} |{at(p)} {len(row.completed())}/{len(row.runs)} | {cells} | "
                         f"{'not recorded' if paper is None else f'{paper:.2f}'} | {flags} |")
    comps = [c for p in pts for c in p.comparisons]
    lines += ["", "## Paired comparisons", ""]
    if not comps:
        lines.append("None: no two rows share data, student, teacher and recipe.")
    else:
        tested = max(sum(c["p_holm"] is not None for c in comps), 1)
        used = ("the paired t-test" if test == "t" else
                f"the sign-flip test (with n paired seeds it cannot give p below 2/2^n: {stats.seeds_needed(tested)} "
                f"paired seeds are the fewest that can support a claim at 5% among {tested})")
        margin, level = comps[0]["margin"], comps[0]["level"]
        lines += [f"A − B per training seed, over the seeds both rows completed on the same evaluation images, in "
                  "points; [95% CI of the mean difference, t]. p (t): two-sided paired t-test; p (sign-flip): "
                  f"two-sided exact sign-flip permutation test (exact up to 16 seeds); both of the {VERDICT_METRIC} "
                  f"differences. The verdicts use {used}; Holm p: adjusted across the {tested} comparisons with a p.",
                  "", f"A claim not supported has a size: detectable is the smallest true difference the paired t-test "
                  f"at Holm's strictest level (0.05/{tested} = {level:.3g}) finds with 80% power, given the seeds and "
                  f"the spread of their differences (– where the test cannot reach that level, or the differences do "
                  f"not vary); equivalence p: two one-sided t-tests (TOST) of a difference within ±{margin:g} points "
                  f"(--margin), Holm-adjusted across the same comparisons, read where the claim's own test is not "
                  f"significant.",
                  "", f"| claim: A > B |{head} paired seeds | best top-1: A − B | last top-1: A − B | p (t) | "
                  f"p (sign-flip) | Holm p | detectable (points) | equivalence p (±{margin:g}, Holm) | verdict |",
                  f"|---|{bar}---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for p in pts:
            for c in p.comparisons:
                claim = f"{c['a']} > {c['b']}"
                lines.append(f"| {claim} |{at(p)} {c['n']} | {_diff(c['best_top1'])} | {_diff(c['last_top1'])} | "
                             f"{_p(c['p_ttest'])} | {_p(c['p_perm'])} | {_p(c['p_holm'])} | {_mde(c)} | "
                             f"{_p(c['p_tost_holm'])} | {c['verdict'].removeprefix(claim + ': ')} |")
        unpaired = [f"- {c['a']} vs {c['b']}{' at ' + at(p).strip(' |') if keys else ''}: unpaired: "
                    f"{'; '.join(c['unpaired'])}" for p in pts for c in p.comparisons if c["unpaired"]]
        lines += ["", "Seeds left out of the pairing (never compared):", "", *unpaired] if unpaired else []
    mech = [(p, m) for p in pts for m in p.mechanism]
    if mech:
        # the projector's own diagnostics only where some run measured them (older analysis.json files lack them)
        shown = {k: v for k, v in MECHANISM.items() if k not in NEWER or any(m[k]["n"] for _, m in mech)}
        lines += ["", "## Mechanism", "", "From each run's analysis.json (`python -m pekd.analyze`, or the run's own "
                  "final evaluation with trainer.analyze=true): mean ± 95% CI over a row's analysed seeds. CKA: "
                  "linear CKA with the teacher's pooled features (0–1); ECE: 15 bins; overconfidence: mean "
                  "confidence minus accuracy; dead projector units: the fraction of a projector's output units that "
                  "no test image activates (mean over the projectors); 1 − cos: the final alignment with the "
                  "teacher's feature on the test set (the projection's, and the student's own where the sizes "
                  "match)." + (" Projected logits top-1: the test accuracy of KD's logit projector's output "
                               "(Linear(logits), which only the KD term reads; the run is evaluated on the raw "
                               "logits beside it)." if "projected_logits_test_top1" in shown else ""), "",
                  f"| run |{head} seeds analysed | " + " | ".join(h for h, _ in shown.values()) + " |",
                  f"|---|{bar}---:|" + "---:|" * len(shown)]
        for p, m in mech:
            cells = " | ".join(_ci(m[k], digits) for k, (_, digits) in shown.items())
            lines.append(f"| {m['label']} |{at(p)} {m['runs']} | {cells} |")
    if flagged:
        lines += ["", "## Incomplete or failed runs", ""]
        for r in flagged:
            where = f" at epoch {r.results['epoch']}/{r.results['epochs']}" if "epoch" in r.results else ""
            error = f" ({r.results['error']})" if r.results.get("error") else ""
            lines.append(f"- {r.status}{where}: {r.path}{error}")
    return "\n".join(lines) + "\n"
