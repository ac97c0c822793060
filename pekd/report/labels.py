"""How pekd.report names its rows: one row per experiment (runs equal but for the seed), labelled by what varies
among the rows it is compared with, under the shortest names a reader can tell apart (`method=pefd q=3`), or by
the names the user gave the runs (the demo's "PEFD q=1").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pekd.report.paper import method_defaults
from pekd.report.runs import NOT_EXPERIMENT, Row, Run, family_free


def group_rows(runs: list[Run]) -> list[Row]:
    """One row per experiment (runs equal but for the seed), labelled so that a reader can tell them apart."""
    groups: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for run in runs:
        if run.config:
            groups.setdefault(run.key, []).append(run)
    rows = [Row("", members) for members in groups.values()]
    for row, label in zip(rows, _labels(rows), strict=True):
        row.label = label
    return sorted(rows, key=lambda r: natural(r.label))


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
    configs = [_as_trained({k: v for k, v in r.runs[0].config.items() if k not in NOT_EXPERIMENT}) for r in rows]
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
        between = [k for k in _varying([configs[i] for i in clash]) if not family_free(k)]
        for i in clash:
            shown[i] = between + shown[i]
    labels = [x or r.runs[0].path.name for x, r in zip(_render(configs, shown, all_keys), rows, strict=True)]
    # rows that train the same (they differ in paper_top1, or in a teacher that neither uses): their directories
    # tell them apart
    return [f"{label} [{row.runs[0].path.name}]" if labels.count(label) > 1 else label
            for label, row in zip(labels, rows, strict=True)]


def _as_trained(config: dict[str, Any]) -> dict[str, Any]:
    """The config as its training reads the teacher: a run that distils nothing (CE without a KD term, or
    teacher.mode=none) builds no teacher (pekd.train), so a teacher it names -- the demo's CE names the one its
    siblings learn from, for pekd.analyze's CKA -- is labelled teacher=none, as it trains. Except where the teacher's
    mode still changes what it trains on: with teacher.mode=bank (or online with bank.online_same_views) its
    samples show the bank's K stored views instead of fresh augmentations."""
    mode = config.get("teacher.mode")
    distils = mode != "none" and (config.get("method.name") != "ce" or (config.get("method.kd_weight") or 0) > 0)
    same_views = mode == "bank" or (mode == "online" and bool(config.get("bank.online_same_views")))
    if mode is None or distils or same_views:
        return config
    return {**config, **{k: "" for k in ("teacher.name", "teacher.weights", "teacher.bank") if k in config},
            "teacher.mode": "none"}


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
        default = method_defaults(str(c.get("method.name")))
        as_set = [k for k in keys if k in default and default[k] == c.get(k)
                  and len({repr(d.get(k)) for d in same}) == 1]
        out.append([k for k in keys if k.endswith(".name") or not (
            c.get(k) == "" or c.get(k.split(".")[0] + ".name") == ""  # unset, or its section is off (teacher=none)
            or k in as_set)])
    return out


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


def natural(text: str) -> list[Any]:
    """Sort key that puts beta=5 before beta=25: numbers compare as numbers (they sit at odd positions)."""
    parts: list[Any] = re.split(r"(\d+(?:\.\d+)?)", text)
    return [float(p) if i % 2 else p for i, p in enumerate(parts)]
