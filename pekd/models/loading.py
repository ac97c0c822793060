"""Load local weights into a backbone, turning every way that can go wrong into one actionable PekdError.

Accepts the layouts teachers are published in: a plain state dict (torchvision), `{'model': sd}`
(RepDistiller), `{'state_dict': sd}` (most training scripts), with or without the `module.` prefix
DataParallel/DDP adds. Reads with weights_only=True: a checkpoint is data, never code to run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from pekd.errors import PekdError

_WRAPPER_KEYS = ("model", "state_dict")
_DDP_PREFIX = "module."


def load_weights(model: nn.Module, path: str, *, config_key: str = "teacher.name") -> None:
    """Load the checkpoint at `path` into `model` strictly.

    `config_key` is the setting the user should check when the checkpoint is for another architecture.
    """
    if not os.path.isfile(path):
        raise PekdError(f"checkpoint {path} not found; check the weights path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for corrupt or foreign files
        raise PekdError(_unreadable_message(path, e)) from e
    state = _state_dict(obj, path)
    arch = getattr(model, "arch", type(model).__name__)
    bad = _first_bad_key(model.state_dict(), state)
    if bad is not None:
        raise PekdError(f"checkpoint {path} does not fit model {arch}: first bad key {bad}; "
                        f"check {config_key}")
    model.load_state_dict(state, strict=True)


def _unreadable_message(path: str, error: Exception) -> str:
    """torch's own message is a page of advice; keep what tells the user what to do."""
    refused = next((line for line in str(error).splitlines() if "Unsupported global:" in line), "")
    if refused:
        detail = refused.split("Unsupported global:")[1].split(" was not an allowed global")[0].strip()
        return (f"checkpoint {path} holds Python objects other than tensors ({detail}), which weights_only "
                "loading refuses; if you trust the file, re-save only its state dict, e.g. "
                "torch.save(torch.load(path, weights_only=False)['model'], new_path)")
    return (f"checkpoint {path} could not be read as a PyTorch checkpoint ({type(error).__name__}); "
            "is it a complete file written by torch.save?")


def _state_dict(obj: object, path: str) -> dict[str, torch.Tensor]:
    """Unwrap a known checkpoint layout to a flat {name: tensor} without the DDP prefix."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise PekdError(f"checkpoint {path} is not a state dict: expected {{name: tensor}}, "
                        f"optionally inside {{'model': ...}} or {{'state_dict': ...}}")
    if all(k.startswith(_DDP_PREFIX) for k in obj):
        return {k[len(_DDP_PREFIX):]: v for k, v in obj.items()}
    return dict(obj)


def _first_bad_key(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """Describe the first mismatch in the model's own key order, else the first key the model lacks."""
    for key, tensor in expected.items():
        if key not in state:
            # Old checkpoints lack BN's step counter; load_state_dict fills it in, so it is not a mismatch.
            if key.endswith("num_batches_tracked"):
                continue
            return f"'{key}' (missing from the checkpoint)"
        if state[key].shape != tensor.shape:
            return (f"'{key}' (checkpoint shape {list(state[key].shape)}, "
                    f"model shape {list(tensor.shape)})")
    for key in state:
        if key not in expected:
            return f"'{key}' (not in the model)"
    return None
