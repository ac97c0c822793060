"""What a command line may ask of the config, checked before composition so a mistake never reaches a queue.

Hydra is permissive where pekd cannot be: a `+new.key=...` (which Hydra's own error suggests for a typo) lands in
the config and changes the run's hash while nothing reads it; `hydra.run.dir=...` is accepted and ignored
(pekd names run directories with `run_dir`); a sweep (`a=1,2`) only works under Hydra's multirun, which pekd
replaces with `pekd submit -m`; and a model name is only resolved when the model is built, after a queue wait.
Hydra's own errors for a typo differ by spelling -- `key=` says "To append to your config use +key=", `group=`
prints its search path -- so every key and group option is checked here first, with one did-you-mean for all.
"""

from __future__ import annotations

import difflib
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pekd.errors import PekdError

if TYPE_CHECKING:  # omegaconf is imported where it is used: `pekd train --help` imports this module for its hints
    from omegaconf import DictConfig

SWEEP_HINT = ("sweeps run through `pekd submit -m ...` (a SLURM job array; add --local to run them on this "
              "machine), one run directory per point")
KEYS_HINT = "`pekd train --cfg job` prints every key with its value"


def check_override(override: Any) -> None:
    """Refuse a parsed Hydra override that pekd would ignore (hydra.*), cannot run as one job (a sweep), or that
    names a key or group option pekd does not have."""
    key = str(override.key_or_group)
    text = override.input_line or key
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        raise PekdError(f"{text}: pekd does not use Hydra's runtime config (hydra.*); a run's directory is "
                        "run_dir=<path> (default runs/<name>-<hash>) and its logs are in <run_dir>/logs")
    if override.is_sweep_override():
        raise PekdError(f"{text} is a sweep but `pekd train` trains one run; {SWEEP_HINT}")
    if override.package is not None or override.is_delete():
        return  # `group@package=...` and `~key` are Hydra's own business; composition checks the result
    groups = config_groups()
    if "/" in key or key in groups:
        check_group_option(text, key, override.value(), groups)
    elif key not in known_keys():
        raise unknown_key(key, text)


def unknown_key(key: str, text: str) -> PekdError:
    """The one message for a key pekd does not have, however it was spelled (key=, +key=, ++key=)."""
    near = difflib.get_close_matches(key, [*known_keys(), *config_groups()], n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else KEYS_HINT
    plus = "; no '+' adds one" if text.startswith("+") else ""
    return PekdError(f"{key} is not a pekd config key ({hint}); every key is declared in "
                     f"pekd/config/__init__.py{plus}")


def check_group_option(text: str, group: str, value: Any, groups: dict[str, list[str]]) -> None:
    """`group=option` must name a file of that group in pekd's configs or a PEKD_CONFIG_PATH folder."""
    options = groups.get(group)
    if options is None:
        near = difflib.get_close_matches(group, list(groups), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else f"the groups are {', '.join(groups)}"
        raise PekdError(f"{text}: {group} is not a config group ({hint}); `pekd train --help` lists each group's "
                        "options")
    if isinstance(value, str) and value not in options:
        near = difflib.get_close_matches(value, options, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(near)}?" if near else f"choose one of {options}"
        raise PekdError(f"{group}={value}: no such option of config group {group} ({hint}); `pekd train --help` "
                        "lists each group's options, and PEKD_CONFIG_PATH adds folders of your own")


def config_groups() -> dict[str, list[str]]:
    """Every config group (a folder of .yaml files) of pekd's configs and the user's folders, with its options.
    Read afresh on every call (a user may add an experiment between two compositions), with os.walk: a few ms."""
    from pekd.config.dirs import config_dir, user_config_dirs

    groups: dict[str, set[str]] = {}
    for folder in (config_dir(), *user_config_dirs()):
        for root, _, files in os.walk(folder):
            options = {name.removesuffix(".yaml") for name in files if name.endswith(".yaml")}
            if options and Path(root) != Path(folder):
                groups.setdefault(Path(root).relative_to(folder).as_posix(), set()).update(options)
    return {group: sorted(options, key=str.lower) for group, options in sorted(groups.items())}


@cache
def known_keys() -> list[str]:
    """Every dotted key of pekd's schema."""
    from omegaconf import OmegaConf

    from pekd.config import Config

    return schema_keys(OmegaConf.structured(Config))


def schema_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a config, without resolving interpolations or reading mandatory values."""
    from omegaconf import DictConfig

    keys = []
    for key in node.keys():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys.extend(schema_keys(child, f"{dotted}."))
    return keys


def check_schema_keys(cfg: DictConfig, schema: type) -> None:
    """Every key of the composed config must be one of the schema's. Overrides were checked one by one before
    composition, so a key found here comes from a config file (an experiment of a PEKD_CONFIG_PATH folder)."""
    from omegaconf import OmegaConf

    known = schema_keys(OmegaConf.structured(schema))
    extra = [k for k in schema_keys(cfg) if k not in known]
    if extra:
        key = extra[0]
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else KEYS_HINT
        raise PekdError(f"{key} is not a pekd config key ({hint}); every key is declared in "
                        "pekd/config/__init__.py, so correct it in the config file that sets it")


def check_model_names(cfg: DictConfig) -> None:
    """model.name and teacher.name must be registry names: fail at composition, not when the job starts."""
    from omegaconf import OmegaConf

    from pekd.models.registry import MODEL_NAMES

    for key in ("model.name", "teacher.name"):
        name = OmegaConf.select(cfg, key)
        if key == "teacher.name" and (not name or cfg.teacher.mode == "none"):
            continue
        if name not in MODEL_NAMES:
            near = difflib.get_close_matches(str(name), MODEL_NAMES, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(near)}?" if near else f"choose one of {list(MODEL_NAMES)}"
            raise PekdError(f"{key}: unknown model {name!r} ({hint}); `pekd train --help` lists the models "
                            "pekd can build")
