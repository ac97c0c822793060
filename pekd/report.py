"""`python -m pekd.report RUN_ROOT [--out DIR]`: every run under RUN_ROOT in one Markdown table and one plot.

Runs that differ only in their seed form one row: mean ± std over the seeds that completed, best and last
top-1, and the paper's figure where the config names one (paper_top1). Rows are labelled by the config keys
that vary between rows (e.g. a sweep's method.beta and method.q). Runs that are incomplete, failed, or never
started (listed in a launch record of launchers/submit.py but without a trace on disk) are flagged, never
silently averaged in.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pekd.engine.rundir import RESUMABLE_CHANGES, flatten
from pekd.errors import PekdError, user_errors_exit

# Keys that do not make two runs different experiments: the seed, and what may change on resumption.
NOT_EXPERIMENT = RESUMABLE_CHANGES | {"seed", "trainer.threads"}


@dataclass
class Run:
    path: Path
    status: str  # completed | running | preempted | stopped | failed | no results | not started
    config: dict[str, Any] = field(default_factory=dict)  # flattened
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, repr(v)) for k, v in self.config.items() if k not in NOT_EXPERIMENT))


@dataclass
class Row:
    label: str
    runs: list[Run]

    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    def stat(self, name: str) -> str:
        values = [float(r.results[name]) for r in self.completed() if not math.isnan(float(r.results[name]))]
        if not values:
            return "–"
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    def paper(self) -> float | None:
        value = self.runs[0].config.get("paper_top1") or 0.0
        return float(value) if value > 0 else None


def _load_run(path: Path) -> Run:
    cfg_file, res_file = path / "config.yaml", path / "results.json"
    config = flatten(OmegaConf.to_container(OmegaConf.load(cfg_file))) if cfg_file.is_file() else {}
    if res_file.is_file():
        results = json.loads(res_file.read_text())
        return Run(path, str(results.get("status", "unknown")), config, results)
    return Run(path, "no results" if config else "not started", config)


def _launched_dirs(root: Path) -> set[Path]:
    """Run directories named by launch records (launchers/submit.py writes <folder>/launches/*.json) in root
    or the nearest folder above it that has them."""
    for folder in (root, *root.parents):
        if (folder / "launches").is_dir():
            dirs = set()
            for record in sorted((folder / "launches").glob("*.json")):
                for run in json.loads(record.read_text()).get("runs", []):
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
    """One row per experiment (runs equal but for the seed); labels from the keys that vary between rows."""
    groups: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for run in runs:
        if run.config:
            groups.setdefault(run.key, []).append(run)
    keys = [dict(k) for k in groups]
    varying = sorted({k for d in keys for k in d if len({x.get(k) for x in keys}) > 1})
    rows = []
    for members in groups.values():
        cfg = members[0].config
        parts = [f"{k.split('.')[-1]}={cfg.get(k)}" for k in varying if k not in ("name", "paper_top1")]
        name = cfg.get("name") or members[0].path.name
        rows.append(Row(f"{name}" + (f" ({', '.join(parts)})" if parts else ""), members))
    return sorted(rows, key=lambda r: _natural(r.label))


def _natural(text: str) -> list[Any]:
    """Sort key that puts beta=5 before beta=25: numbers compare as numbers (they sit at odd positions)."""
    parts: list[Any] = re.split(r"(\d+(?:\.\d+)?)", text)
    return [float(p) if i % 2 else p for i, p in enumerate(parts)]


def markdown(rows: list[Row], flagged: list[Run], root: Path) -> str:
    lines = [f"# pekd report: {root}", "",
             "| run | seeds done | best top-1 (%) | last top-1 (%) | paper top-1 (%) | flags |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        bad = [r for r in row.runs if r.status != "completed"]
        flags = ", ".join(f"{r.status}: {r.path.name}" for r in bad)
        paper = row.paper()
        lines.append(f"| {row.label} | {len(row.completed())}/{len(row.runs)} | {row.stat('best_top1')} | "
                     f"{row.stat('last_top1')} | {f'{paper:.2f}' if paper else '–'} | {flags} |")
    if flagged:
        lines += ["", "## Incomplete or failed runs", ""]
        for r in flagged:
            where = f" at epoch {r.results['epoch']}/{r.results['epochs']}" if "epoch" in r.results else ""
            error = f" ({r.results['error']})" if r.results.get("error") else ""
            lines.append(f"- {r.status}{where}: {r.path}{error}")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    """Best top-1 per row (mean, with the seeds' std as error bar) and the paper's figure as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    for i, row in enumerate(rows):
        values = [float(r.results["best_top1"]) for r in row.completed()]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(i, statistics.mean(values), yerr=std, color="tab:blue", capsize=4,
                   label="pekd (mean ± std over seeds)")
        if row.paper():
            ax.plot(i, row.paper(), "r_", markersize=22, mew=3, label="paper")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one legend entry per kind, not per row
    if unique:
        ax.legend(unique.values(), unique.keys(), loc="lower right")
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("best top-1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a run directory, a sweep directory or a whole run root")
    ap.add_argument("--out", type=Path, help="where report.md and report.png go (default: ROOT)")
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
    text = markdown(rows, flagged, args.root.resolve())
    (out / "report.md").write_text(text)
    plot(rows, out / "report.png")
    print(text + f"\nwritten: {out / 'report.md'}, {out / 'report.png'}")


if __name__ == "__main__":
    main()
