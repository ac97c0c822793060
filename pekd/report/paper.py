"""The published top-1 beside a row (pekd.report's "paper top-1" column): the experiment config's paper_top1,
shown only where the row trains the method that number was published for.

An experiment config (configs/experiment/<name>.yaml) is one recipe -- a teacher/student pair and a method -- and
records the top-1 published for it, its source in a comment beside it (0, the default: none recorded). A run made
with the method changed on the command line (`experiment=cifar100_r56_r20 method=kd`, or `method.q=1`) keeps the
experiment's name and number, which then belong to another method: the report compares the run's method settings
with those its experiment composes and shows no number where they differ. Papers report the best epoch's top-1, so
the number stands beside the best column.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import cache
from typing import Any

from omegaconf import OmegaConf

from pekd.config.dirs import CONFIG_DIR, user_config_dirs


@cache
def method_defaults(name: str) -> dict[str, Any]:
    """What `method=<name>` sets: the schema's defaults and configs/method/<name>.yaml (kd's 0.1 CE + 0.9 KD)."""
    from pekd.config import MethodConfig

    file = CONFIG_DIR / "method" / f"{name}.yaml"
    group = OmegaConf.to_container(OmegaConf.load(file)) if file.is_file() else {}
    return {f"method.{k}": v for k, v in {**asdict(MethodConfig()), **group}.items()}  # type: ignore[dict-item]


def _method_choice(defaults: list[Any]) -> str | None:
    """The method group chosen by a defaults list (`method: pefd` or `override /method: kd`), if any."""
    for entry in defaults:
        if isinstance(entry, dict):
            for key, value in entry.items():
                if str(key).split()[-1].lstrip("/") == "method":
                    return str(value)
    return None


@cache
def experiment_method(name: str) -> dict[str, Any] | None:
    """The method.* settings experiment `name` composes (its method's defaults under its own `method:` section);
    None where no experiment file (pekd's or PEKD_CONFIG_PATH's) has that name."""
    for folder in (CONFIG_DIR, *user_config_dirs()):
        file = folder / "experiment" / f"{name}.yaml"
        if name and file.is_file():
            spec = OmegaConf.to_container(OmegaConf.load(file))
            root = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "config.yaml"))
            assert isinstance(spec, dict) and isinstance(root, dict)
            method = _method_choice(spec.get("defaults") or []) or _method_choice(root.get("defaults") or [])
            own = {f"method.{k}": v for k, v in (spec.get("method") or {}).items()}
            return {**method_defaults(str(method)), **own}
    return None


def published(config: dict[str, Any]) -> float | None:
    """The top-1 the run's (flattened) config records as published for its recipe; None where it records none or
    where the run's method is not its experiment's."""
    value = config.get("paper_top1")
    if not isinstance(value, int | float) or not value > 0:
        return None
    expected = experiment_method(str(config.get("name") or ""))
    if expected is not None and any(k in config and config[k] != v for k, v in expected.items()):
        return None
    return float(value)
