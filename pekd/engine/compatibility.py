"""Whether a checkpoint can resume this run: one line naming what does not fit, never load_state_dict's page.

A run directory should only ever hold checkpoints of its own config (pekd.engine.rundir refuses another config),
but a file copied in by hand, a partial copy of another run, or a checkpoint of an older pekd can still land there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from pekd.errors import PekdError
from pekd.models.loading import first_bad_key

MISFIT = ("it was written for another model, method or projector count: use another run_dir, or on_existing=overwrite "
          "to move the old run aside")
_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step_in_epoch", "global_step", "best_top1", "history",
         "global_batch", "seed")


def describe(path: Path | None) -> str:
    return f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"


def check_fits(state: dict[str, Any], module: nn.Module, cfg: Any, global_batch: int, path: Path | None) -> None:
    """Raise one PekdError unless `state` is a pekd training checkpoint of this recipe and this module: its keys,
    global batch and seed, then the first parameter whose name or shape differs."""
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise PekdError(f"{describe(path)} is not a pekd training checkpoint (no {', '.join(missing)}); move it aside")
    if state["global_batch"] != global_batch or state["seed"] != cfg.seed:
        raise PekdError(f"checkpoint was written with global batch {state['global_batch']} and seed {state['seed']}, "
                        f"this run has {global_batch} and {cfg.seed}; resume with the same recipe")
    bad = first_bad_key(module.state_dict(), state["model"])
    if bad is not None:
        raise PekdError(f"{describe(path)} does not fit this run's {cfg.model.name} + {cfg.method.name} "
                        f"(q={cfg.method.q}): first bad key {bad}; {MISFIT}")
