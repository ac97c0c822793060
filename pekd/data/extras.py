"""The optional packages behind data.pipeline=ffcv and dali, and the pip extra that installs each.

FFCV (an sdist compiled against libturbojpeg and OpenCV) and DALI (a CUDA-major-specific wheel of ~0.5 GB) are
extras, not dependencies: most users train with the torch pipeline. A run that asks for a backend whose package
is absent (or cannot load its shared libraries) must stop before any work with one line naming the extra, not a
ModuleNotFoundError from deep inside a loader. The experiment tracker (tracker.name=wandb) is an extra for the
same reason, reported the same way.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from pekd.errors import PekdError

MODULES = {"ffcv": "ffcv", "dali": "nvidia.dali"}


def extra_for(pipeline: str) -> str:
    """The extra that installs `pipeline`'s package; DALI's wheel is built per CUDA major version, so it is the
    one matching this torch's CUDA (13 for a CPU-only torch: DALI's CPU operators run with either)."""
    if pipeline == "dali":
        return "dali-cu12" if (torch.version.cuda or "").startswith("12.") else "dali-cu13"
    return pipeline


def require(pipeline: str) -> None:
    """Import the package data.pipeline=`pipeline` needs, or raise one PekdError naming the extra to install."""
    module = MODULES.get(pipeline)
    if module is not None:
        import_extra(module, extra_for(pipeline), f"data.pipeline={pipeline}", "data.pipeline=torch")


def import_extra(module: str, extra: str, needed_by: str, instead: str) -> Any:
    """Import `module`, which the pip extra `extra` installs, or raise one PekdError saying that `needed_by` (a
    config setting) needs it, how to install it, and the setting `instead` that does without it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PekdError(f"{needed_by} needs the {module} package, which cannot be imported ({e}); install it with "
                        f"`pip install 'pekd[{extra}]'` (docs/install.md), or use {instead}") from None
