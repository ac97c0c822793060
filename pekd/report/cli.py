"""`python -m pekd.report ROOT [--out DIR] [--compare "A>B" ...] [--along KEY ...]`: every run under ROOT, its
uncertainty, and plain verdicts on paired comparisons -> report.md, report.json and report.csv (the same numbers,
for scripts), report.png.

Runs whose configs differ only in the training seed form a row: mean and 95% CI of best and last top-1 over the
seeds that completed. Rows that share data, student, teacher and recipe (they differ only in the method or in
how the teacher's signal is delivered), and a teacherless CE baseline of the same student and recipe, are
compared paired by seed (pekd.report.stats). Rows are labelled by what varies among the rows they are compared with
(pekd.report.labels). --along KEY makes every value of KEY a report of its own and shows each claim as a curve
along it (pekd.report.along). Runs that are incomplete, failed, or never started (listed in a launch record of
launchers/submit.py but without a trace on disk) are flagged, never averaged in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pekd.engine.files import atomic_write_bytes, json_safe, write_error
from pekd.engine.rundir import flatten, read_run_config
from pekd.errors import PekdError, user_errors_exit
from pekd.report import stats
from pekd.report.along import points
from pekd.report.csv_json import report_csv, report_json
from pekd.report.markdown import markdown
from pekd.report.plot import plot, plot_along
from pekd.report.runs import Run

# A sweep's own report options, fixed when it was planned (pekd.study writes it): used when none are typed.
OPTIONS_FILE = "report-options.json"


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
    fix = "restore or move that run directory and report again"
    config = flatten(read_run_config(cfg_file, fix)) if cfg_file.is_file() else {}
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


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pekd.report", description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("root", type=Path, help="a run directory, a sweep directory or a whole run root")
    ap.add_argument("--out", type=Path, help="where report.md/.json/.csv/.png go (default: ROOT)")
    ap.add_argument("--compare", action="append", metavar="A>B",
                    help="a claim to test, two row labels as printed (repeatable; default: every pair of a family)")
    ap.add_argument("--along", action="append", metavar="KEY",
                    help="a config key (data.subset, trainer.epochs, method.beta, ...): the report at every value of "
                    "it, each claim as a curve along it (repeatable: the first is the plots' x axis)")
    ap.add_argument("--test", choices=sorted(stats.TESTS),
                    help="the p the verdicts use: perm (exact sign-flip, default; needs 6+ paired seeds to reach 5%%) "
                    "or t (paired t-test, the test behind the CIs shown)")
    ap.add_argument("--margin", type=float, metavar="POINTS",
                    help=f"equivalence margin in top-1 points: a claim not supported is called equivalent when two "
                    f"one-sided t-tests place its difference within ±POINTS (default {stats.MARGIN})")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        raise PekdError(f"{str(args.root)!r} is not a folder; give the folder that holds the runs to report (a run "
                        "directory, a sweep's folder or a study's folder)")
    options_file = args.root / OPTIONS_FILE
    from_file = not (args.compare or args.along or args.test or args.margin is not None) and options_file.is_file()
    if from_file:  # the options the sweep fixed for its own report (pekd.study writes them before any result)
        args = ap.parse_args([str(args.root), *(["--out", str(args.out)] if args.out else []),
                              *_read_options(options_file)])
    margin = stats.MARGIN if args.margin is None else args.margin
    if not margin > 0:
        raise PekdError(f"--margin {args.margin}: the equivalence margin must be a positive number of top-1 points "
                        f"(default {stats.MARGIN})")
    test = args.test or "perm"
    runs = find_runs(args.root)
    if not runs:
        raise PekdError(f"no pekd runs (config.yaml / results.json) under {str(args.root)!r}")
    keys: list[str] = list(dict.fromkeys(args.along or []))
    completed = [r for r in runs if r.status == "completed" and r.config]
    pts = points(runs, keys, args.compare, test, margin) if any(r.config for r in runs) else []
    flagged = [r for r in runs if r.status != "completed"]
    out = (args.out or args.root).resolve()
    used = f"{options_file} ({' '.join(_read_options(options_file))})" if from_file else None
    text = markdown(args.root, pts, keys, flagged, test, used)  # the root as typed: no machine's absolute path
    summary = json_safe({**report_json(args.root.resolve(), pts, keys, flagged, test), "root": str(args.root)})
    for name, data in (("report.md", text), ("report.json", json.dumps(summary, indent=1, allow_nan=False) + "\n"),
                       ("report.csv", report_csv(pts, keys))):
        atomic_write_bytes(out / name, data.encode())  # a full or read-only disk: one line naming the file
    written = ["md", "json", "csv"]
    try:
        if completed and keys:
            plot_along(pts, keys, out / "report.png")
        elif completed:
            plot(pts[0], out / "report.png")
        else:  # nothing to draw: an older plot beside this report would show runs it no longer has
            (out / "report.png").unlink(missing_ok=True)
    except OSError as e:
        raise write_error(out / "report.png", e) from None
    written += ["png"] if completed else []
    print(text + f"\nwritten: {', '.join(str(out / f'report.{ext}') for ext in written)}")


def _read_options(path: Path) -> list[str]:
    """The command-line options a sweep stored for its report: {"options": ["--along", "data.subset", ...]}."""
    options = _read_json(path).get("options")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise PekdError(f"{str(path)!r} has no list of option strings under \"options\"; fix or move the file, or "
                        "give the options on the command line")
    return options
