"""`python -m pekd.report ROOT [--out DIR] [--compare "A>B" ...]`: every run under ROOT, its uncertainty, and
plain verdicts on paired comparisons -> report.md, report.json (the same numbers, for scripts), report.png.

Runs whose configs differ only in the training seed form a row: mean and 95% CI of best and last top-1 over the
seeds that completed. Rows that share data, student, teacher and recipe (they differ only in the method or in
how the teacher's signal is delivered), and a teacherless CE baseline of the same student and recipe, are
compared paired by seed (pekd.stats). Rows are labelled by what varies among the rows they are compared with.
Runs that are incomplete, failed, or never started (listed in a launch record of launchers/submit.py but without
a trace on disk) are flagged, never averaged in.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pekd import stats
from pekd.engine.rundir import flatten
from pekd.errors import PekdError, user_errors_exit
from pekd.stats import METRICS, NOT_EXPERIMENT, VERDICT_METRIC, Row, Run


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PekdError(f"cannot read {str(path)!r} ({e}); fix or move the file and report again") from None
    if not isinstance(data, dict):
        raise PekdError(f"{str(path)!r} is not a JSON object; fix or move the file and report again")
    return data


def _load_run(path: Path) -> Run:
    cfg_file, res_file, ana_file = path / "config.yaml", path / "results.json", path / "analysis.json"
    config = flatten(OmegaConf.to_container(OmegaConf.load(cfg_file))) if cfg_file.is_file() else {}
    analysis = _read_json(ana_file) if ana_file.is_file() else {}
    if res_file.is_file():
        results = _read_json(res_file)
        return Run(path, str(results.get("status", "unknown")), config, results, analysis)
    return Run(path, "no results" if config else "not started", config)


def _launched_dirs(root: Path) -> set[Path]:
    """Run directories named by launch records (launchers/submit.py writes <folder>/launches/*.json) in root
    or the nearest folder above it that has them."""
    for folder in (root, *root.parents):
        if (folder / "launches").is_dir():
            dirs = set()
            for record in sorted((folder / "launches").glob("*.json")):
                for run in _read_json(record).get("runs", []):
                    run_dir = Path(run["run_dir"])
                    if run_dir == root or root in run_dir.parents:
                        dirs.add(run_dir)
            return dirs
    return set()


def find_runs(root: Path) -> list[Run]:
    root = root.resolve()
    dirs = {p.parent for name in ("config.yaml", "results.json") for p in root.rglob(name)}
    dirs |= _launched_dirs(root)
    # on_existing=overwrite moves a run aside as <dir>.old-<time>: superseded, not a result.
    return [_load_run(d) for d in sorted(dirs) if ".old-" not in d.name]


def group_rows(runs: list[Run]) -> list[Row]:
    """One row per experiment (runs equal but for the seed), labelled so that a reader can tell them apart."""
    groups: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for run in runs:
        if run.config:
            groups.setdefault(run.key, []).append(run)
    rows = [Row("", members) for members in groups.values()]
    for row, label in zip(rows, _labels(rows), strict=True):
        row.label = label
    return sorted(rows, key=lambda r: _natural(r.label))


def _varying(configs: list[dict[str, Any]]) -> list[str]:
    keys = {k for c in configs for k in c}
    return sorted(k for k in keys if len({repr(c.get(k)) for c in configs}) > 1)


def _labels(rows: list[Row]) -> list[str]:
    """The keys that vary among the rows a row is compared with (`method=pefd q=3`), and the keys that tell such
    groups apart only where labels would otherwise collide; the run's `name` only where it varies and is needed,
    or alone where nothing varies. Rows that each carry a name of their own (the demo's "PEFD q=1") are labelled by
    it: a name the user chose says more than any key."""
    names = [str(r.runs[0].config.get("name") or "") for r in rows]
    if all(names) and len(set(names)) == len(names):
        return names
    configs = [{k: v for k, v in r.runs[0].config.items() if k not in NOT_EXPERIMENT} for r in rows]
    all_keys = {k for r in rows for k in r.runs[0].config}  # seed and name too: bank.seed must not read as seed
    groups: list[list[int]] = []  # rows linked by comparability
    for i, row in enumerate(rows):
        linked = [g for g in groups if any(row.comparable(rows[j]) for j in g)]
        groups = [g for g in groups if g not in linked] + [[j for g in linked for j in g] + [i]]
    shown: list[list[str]] = [[] for _ in rows]
    for members in groups:
        group = [configs[j] for j in members]
        for i, keys in zip(members, _essential(_varying(group), group), strict=True):
            shown[i] = keys
    labels = _render(configs, shown, all_keys)
    for i, label in enumerate(labels):  # alone, no name: say at least which method it trains
        shown[i] = shown[i] or (["method.name"] if not label else [])
    labels = _render(configs, shown, all_keys)
    for label in {x for x in labels if not x or labels.count(x) > 1}:
        clash = [i for i, x in enumerate(labels) if x == label]
        between = [k for k in _varying([dict(rows[i].family()) for i in clash]) if not stats.family_free(k)]
        for i in clash:
            shown[i] = between + shown[i]
    labels = [x or r.runs[0].path.name for x, r in zip(_render(configs, shown, all_keys), rows, strict=True)]
    if len(set(labels)) < len(labels):  # rows that differ only in paper_top1: the directory tells them apart
        labels = [f"{label} [{row.runs[0].path.name}]" for label, row in zip(labels, rows, strict=True)]
    return labels


def _essential(keys: list[str], configs: list[dict[str, Any]]) -> list[list[str]]:
    """The keys each row's label needs, without what a reader is already told: keys that their section's name
    decides (teacher.weights under `teacher=resnet56`), method settings that are what the method's config sets
    for every row of that method (kd's 0.1 CE + 0.9 KD), unset values, the settings of a section that is off
    (teacher=none), and the run's name where the rest tells rows apart."""
    def decided(k: str) -> bool:
        by, seen = k.rsplit(".", 1)[0] + ".name", {}
        return not k.startswith("method.") and by != k and by in keys and \
            all(seen.setdefault(repr(c.get(by)), repr(c.get(k))) == repr(c.get(k)) for c in configs)
    keys = [k for k in keys if not decided(k)]
    rest = [k for k in keys if k not in ("name", "paper_top1")]
    if "name" in keys and len({tuple(repr(c.get(k)) for k in rest) for c in configs}) == len(configs):
        keys = [k for k in keys if k != "name"]
    out = []
    for c in configs:
        same = [d for d in configs if d.get("method.name") == c.get("method.name")]
        default = _method_defaults(str(c.get("method.name")))
        as_set = [k for k in keys if k in default and default[k] == c.get(k)
                  and len({repr(d.get(k)) for d in same}) == 1]
        out.append([k for k in keys if k.endswith(".name") or not (
            c.get(k) == "" or c.get(k.split(".")[0] + ".name") == ""  # unset, or its section is off (teacher=none)
            or k in as_set)])
    return out


@cache
def _method_defaults(name: str) -> dict[str, Any]:
    """What `method=<name>` sets: the schema's defaults and configs/method/<name>.yaml (kd's 0.1 CE + 0.9 KD)."""
    from pekd.config import MethodConfig
    from pekd.train import CONFIG_DIR

    file = CONFIG_DIR / "method" / f"{name}.yaml"
    group = OmegaConf.to_container(OmegaConf.load(file)) if file.is_file() else {}
    return {f"method.{k}": v for k, v in {**asdict(MethodConfig()), **group}.items()}  # type: ignore[dict-item]


def _render(configs: list[dict[str, Any]], shown: list[list[str]], all_keys: set[str]) -> list[str]:
    """`key=value` for each shown key under its shortest unambiguous name; an empty label where nothing is shown
    and the run has no name."""
    used = {k for keys in shown for k in keys if k not in ("name", "paper_top1")}
    short = {k: k.rsplit(".", 2)[-2] if k.endswith(".name") else k.rsplit(".", 1)[-1] for k in used}
    # ambiguous where two shown keys share it, or it reads as another key (bank.seed: seed) or section (teacher.bank)
    sections = {k.split(".")[0] for k in all_keys}
    names = {k: k if list(short.values()).count(s) > 1 or (s in all_keys and s != k)
             or (s in sections and not k.endswith(".name")) else s for k, s in short.items()}
    labels = []
    for cfg, keys in zip(configs, shown, strict=True):
        parts = [f"{names[k]}={_fmt_value(cfg[k])}" for k in sorted(names, key=_label_order) if k in keys and k in cfg]
        if "name" in keys and cfg.get("name"):
            parts.insert(0, str(cfg["name"]))
        labels.append(" ".join(parts) or str(cfg.get("name") or ""))
    return labels


def _label_order(key: str) -> tuple[bool, str, bool, str]:
    """The method under test first, then section by section, each section's name first: method=pefd q=3 teacher=..."""
    section = key.split(".")[0]
    return section != "method", section, not key.endswith(".name"), key


def _fmt_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_fmt_value(v) for v in value) + "]"
    if isinstance(value, str) and "/" in value.rstrip("/"):
        return Path(value).name  # a path: its last component says which file
    return str(value) if value != "" else "none"


def _natural(text: str) -> list[Any]:
    """Sort key that puts beta=5 before beta=25: numbers compare as numbers (they sit at odd positions)."""
    parts: list[Any] = re.split(r"(\d+(?:\.\d+)?)", text)
    return [float(p) if i % 2 else p for i, p in enumerate(parts)]


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


# analysis.json keys of the mechanism table: column head, decimals
MECHANISM = {"train_test_gap": ("train − test gap (points)", 2), "student_cka": ("student CKA", 3),
             "projector_cka": ("projector CKA", 3), "student_ece": ("student ECE (%)", 2),
             "student_overconfidence": ("overconfidence (points)", 2)}


def markdown(root: Path, rows: list[Row], comps: list[dict[str, Any]], mech: list[dict[str, Any]],
             flagged: list[Run], test: str = "perm") -> str:
    lines = [f"# pekd report: {root}", "", "Mean over the seeds that completed ± the half-width of its 95% "
             "confidence interval (Student t); one seed gives no interval (–).", "",
             "| run | seeds done | best top-1 (%) | last top-1 (%) | paper top-1 (%) | flags |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        flags = ", ".join(f"{r.status}: {r.path.name}" for r in row.runs if r.status != "completed")
        cells = " | ".join(_ci(stats.summary(row.values(m))) for m in METRICS)
        paper = row.paper()
        lines.append(f"| {row.label} | {len(row.completed())}/{len(row.runs)} | {cells} | "
                     f"{f'{paper:.2f}' if paper else '–'} | {flags} |")
    lines += ["", "## Paired comparisons", ""]
    if not comps:
        lines.append("None: no two rows share data, student, teacher and recipe.")
    else:
        tested = max(sum(c["p_holm"] is not None for c in comps), 1)
        used = ("the paired t-test" if test == "t" else
                f"the sign-flip test (with n paired seeds it cannot give p below 2/2^n: {stats.seeds_needed(tested)} "
                f"paired seeds are the fewest that can support a claim at 5% among {tested})")
        lines += [f"A − B per training seed, over the seeds both rows completed on the same evaluation images, in "
                  "points; [95% CI of the mean difference, t]. p (t): two-sided paired t-test; p (sign-flip): "
                  f"two-sided exact sign-flip permutation test (exact up to 16 seeds); both of the {VERDICT_METRIC} "
                  f"differences. The verdicts use {used}; Holm p: adjusted across the {tested} comparisons with a p.",
                  "", "| claim: A > B | paired seeds | best top-1: A − B | last top-1: A − B | p (t) | p (sign-flip) "
                  "| Holm p | verdict |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for c in comps:
            claim = f"{c['a']} > {c['b']}"
            lines.append(f"| {claim} | {c['n']} | {_diff(c['best_top1'])} | {_diff(c['last_top1'])} | "
                         f"{_p(c['p_ttest'])} | {_p(c['p_perm'])} | {_p(c['p_holm'])} | "
                         f"{c['verdict'].removeprefix(claim + ': ')} |")
        unpaired = [f"- {c['a']} vs {c['b']}: unpaired: {'; '.join(c['unpaired'])}" for c in comps if c["unpaired"]]
        lines += ["", "Seeds left out of the pairing (never compared):", "", *unpaired] if unpaired else []
    if mech:
        lines += ["", "## Mechanism", "", "From each run's analysis.json (`python -m pekd.analyze`): mean ± 95% CI "
                  "over a row's analysed seeds. CKA: linear CKA with the teacher's pooled features (0–1); ECE: 15 "
                  "bins; overconfidence: mean confidence minus accuracy.", "",
                  "| run | seeds analysed | " + " | ".join(h for h, _ in MECHANISM.values()) + " |",
                  "|---|---:|" + "---:|" * len(MECHANISM)]
        for m in mech:
            cells = " | ".join(_ci(m[k], digits) for k, (_, digits) in MECHANISM.items())
            lines.append(f"| {m['label']} | {m['runs']} | {cells} |")
    if flagged:
        lines += ["", "## Incomplete or failed runs", ""]
        for r in flagged:
            where = f" at epoch {r.results['epoch']}/{r.results['epochs']}" if "epoch" in r.results else ""
            error = f" ({r.results['error']})" if r.results.get("error") else ""
            lines.append(f"- {r.status}{where}: {r.path}{error}")
    return "\n".join(lines) + "\n"


def report_json(root: Path, rows: list[Row], comps: list[dict[str, Any]], mech: list[dict[str, Any]],
                flagged: list[Run], test: str = "perm") -> dict[str, Any]:
    """The numbers of report.md, unrounded, with every seed's values, for scripts."""
    return {
        "root": str(root),
        "test": ("paired t-test (scipy.stats.ttest_rel)" if test == "t" else "two-sided sign-flip permutation "
                 "test (exact up to 16 seeds)") + " of paired best_top1 differences decides the verdicts; Holm "
                 "across the comparisons with a p; p_perm and p_ttest are both given",
        "rows": [{"label": row.label, "paper_top1": row.paper(),
                  "config": {k: v for k, v in row.runs[0].config.items() if k not in NOT_EXPERIMENT},
                  "runs": [{"path": str(r.path), "seed": r.config.get("seed"), "status": r.status,
                            **{m: r.value(m) for m in METRICS}} for r in row.runs],
                  **{m: stats.summary(row.values(m)) for m in METRICS}} for row in rows],
        "comparisons": comps,
        "mechanism": mech,
        "flagged": [{"path": str(r.path), "status": r.status, "error": r.results.get("error")} for r in flagged],
    }


def plot(rows: list[Row], path: Path) -> None:
    """Every seed as a point, the mean with its 95% CI, the paper's figure in red; one panel per metric, rows
    top to bottom with their full labels, the accuracy axis spanning the data (not 0-100)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    label_inches = 0.075 * max((len(r.label) for r in rows), default=0)  # ~10 pt characters
    fig, axes = plt.subplots(1, len(METRICS), sharey=True, squeeze=False,
                             figsize=(label_inches + 4.5 * len(METRICS), 1.4 + 0.45 * len(rows)))
    jitter = np.random.default_rng(0)  # the same picture for the same runs
    for ax, metric in zip(axes[0], METRICS, strict=True):
        seen: list[float] = []
        for y, row in enumerate(rows):
            values = row.values(metric)
            ax.scatter(values, y + jitter.uniform(-0.15, 0.15, len(values)), s=16, color="tab:blue", alpha=0.6,
                       label="one seed", zorder=2)
            s = stats.summary(values)
            if s["mean"] is not None:
                ax.errorbar(s["mean"], y, xerr=s["ci_half"] if s["ci"] else None, fmt="D", color="black",
                            ms=5, capsize=4, label="mean, 95% CI", zorder=3)
                seen += [*values, *(s["ci"] or [])]
            if row.paper() and metric == VERDICT_METRIC:  # papers report the best epoch's top-1
                ax.plot(row.paper(), y, "r*", ms=11, label="paper's top-1", zorder=4)
                seen.append(row.paper())
        if seen:
            margin = max(0.1 * (max(seen) - min(seen)), 0.5)
            ax.set_xlim(min(seen) - margin, max(seen) + margin)
        ax.set_xlabel(f"{metric.replace('_top1', '')} top-1 (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)), [r.label for r in rows])
    axes[0][0].set_ylim(max(len(rows), 1) - 0.5, -0.5)  # first row on top, as in report.md
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one legend entry per kind, not per row
    if unique:
        fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique), bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a run directory, a sweep directory or a whole run root")
    ap.add_argument("--out", type=Path, help="where report.md, report.json and report.png go (default: ROOT)")
    ap.add_argument("--compare", action="append", metavar="A>B",
                    help="a claim to test, two row labels as printed (repeatable; default: every pair of a family)")
    ap.add_argument("--test", choices=sorted(stats.TESTS), default="perm",
                    help="the p the verdicts use: perm (exact sign-flip, default; needs 6+ paired seeds to reach 5%%) "
                    "or t (paired t-test, the test behind the CIs shown)")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        raise PekdError(f"{str(args.root)!r} is not a directory")
    runs = find_runs(args.root)
    if not runs:
        raise PekdError(f"no pekd runs (config.yaml / results.json) under {str(args.root)!r}")
    rows = group_rows(runs)
    flagged = [r for r in runs if r.status != "completed"]
    out = (args.out or args.root).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root, comps, mech = args.root.resolve(), stats.comparisons(rows, args.compare, args.test), \
        stats.mechanism(rows, MECHANISM)
    text = markdown(root, rows, comps, mech, flagged, args.test)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(report_json(root, rows, comps, mech, flagged, args.test), indent=1)
                                     + "\n")
    plot(rows, out / "report.png")
    print(text + f"\nwritten: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}")


if __name__ == "__main__":
    main()
