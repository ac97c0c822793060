"""`python -m bench.gpu_check.summary RESULTS OUT_JSON PHASES_FILE CHECK...`: the table printed last, and its JSON.

One row per planned check, in the order given: its recorded status and figure, or FAIL when the step left no
result (bench/gpu_check.sh records timeouts and crashes itself, so this is a last guard). Exit status 1 if any
row FAILs. The JSON holds the rows, the preflight's environment, the phases' wall times and the counts.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path


def node(env: dict) -> str:
    """The header's GPU and torch: the preflight's reading, else torch's installed version (read from its metadata,
    so a broken torch cannot take the table with it) and the GPU as unread -- never 'no CUDA device' or None for
    a node whose preflight did not run or failed."""
    if env:
        return f"{env.get('gpu', {}).get('name', 'no CUDA device')}, torch {env.get('torch')}"
    try:
        torch = md.version("torch")
    except md.PackageNotFoundError:
        torch = "not installed"
    return f"GPU not read (the preflight recorded no environment), torch {torch}"


def main() -> int:
    results, out_json, phases_file, *checks = sys.argv[1:]
    rows = []
    for check in checks:
        path = Path(results) / f"{check}.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
        else:
            rows.append({"check": check, "status": "FAIL", "figure": "the step recorded no result", "details": {}})
    phases = {}
    if Path(phases_file).exists():
        for line in Path(phases_file).read_text().splitlines():
            name, seconds = line.split()
            phases[name] = float(seconds)
    pre = next((r for r in rows if r["check"] == "preflight"), {"details": {}})
    env = pre["details"].get("environment", {})
    counts = Counter(r["status"] for r in rows)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": platform.node(), "environment": env,
               "not_checkable": pre["details"].get("not_checkable", {}), "phases_s": phases,
               "counts": dict(counts), "checks": rows}
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps(summary, indent=1, default=str))

    print(f"\n## pekd GPU check: {node(env)}, {summary['date']}; phases "
          + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + f"; JSON: {out_json}\n")
    width = max(len(r["check"]) for r in rows)
    print(f"| {'check':<{width}} | {'status':<11} | figure |")
    print(f"|{'-' * (width + 2)}|-------------|--------|")
    for r in rows:
        print(f"| {r['check']:<{width}} | {r['status']:<11} | {r['figure']} |")
    print(f"\n{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['NOT CHECKED']} NOT CHECKED", flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
