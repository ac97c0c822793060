"""What a command line may ask of the config, checked at composition so a mistake never reaches a queue.

Hydra is permissive where pekd cannot be: a `+new.key=...` (which Hydra's own error suggests for a typo) lands in
the config and changes the run's hash while nothing reads it; `hydra.run.dir=...` is accepted and ignored
(pekd names run directories with `run_dir`); a sweep (`a=1,2`) only works under Hydra's multirun, which pekd
replaces with launchers/submit.py; and a model name is only resolved when the model is built, after a queue wait.
"""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pekd.errors import PekdError

SWEEP_HINT = ("sweeps run through `python launchers/submit.py -m ...` (a SLURM job array; add --local to run them "
              "on this machine), one run directory per point")


def check_override(override: Any) -> None:
    """Refuse a parsed Hydra override that pekd would ignore (hydra.*) or cannot run as one job (a sweep)."""
    key = str(override.key_or_group)
    text = override.input_line or key
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        raise PekdError(f"{text}: pekd does not use Hydra's runtime config (hydra.*); a run's directory is "
                        "run_dir=<path> (default runs/<name>-<hash>) and its logs are in <run_dir>/logs")
    if override.is_sweep_override():
        raise PekdError(f"{text} is a sweep but `python -m pekd.train` trains one run; {SWEEP_HINT}")


def schema_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a config, without resolving interpolations or reading mandatory values."""
    keys = []
    for key in node.keys():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys.extend(schema_keys(child, f"{dotted}."))
    return keys


def check_schema_keys(cfg: DictConfig, schema: type) -> None:
    """Every key of the composed config must be one of the schema's: an added key is a typo, never a setting."""
    known = schema_keys(OmegaConf.structured(schema))
    extra = [k for k in schema_keys(cfg) if k not in known]
    if extra:
        key = extra[0]
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}?" if near else "see `python -m pekd.train --cfg job` for the valid keys"
        raise PekdError(f"{key} is not a pekd config key ({hint}); every key is declared in pekd/config.py, "
                        "so remove the '+' and correct the name")


def check_model_names(cfg: DictConfig) -> None:
    """model.name and teacher.name must be registry names: fail at composition, not when the job starts."""
    from pekd.models.registry import MODEL_NAMES

    for key in ("model.name", "teacher.name"):
        name = OmegaConf.select(cfg, key)
        if key == "teacher.name" and (not name or cfg.teacher.mode == "none"):
            continue
        if name not in MODEL_NAMES:
            near = difflib.get_close_matches(str(name), MODEL_NAMES, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(near)}?" if near else f"choose one of {list(MODEL_NAMES)}"
            raise PekdError(f"{key}: unknown model {name!r} ({hint}); `python -m pekd.train --help` lists the "
                            "models pekd can build")
