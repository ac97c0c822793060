"""Load local weights into a backbone, turning every way that can go wrong into one actionable PekdError.

Accepts the layouts teachers are published in: a plain state dict (torchvision), `{'model': sd}`
(RepDistiller), `{'state_dict': sd}` (most training scripts), with or without the `module.` prefix
DataParallel/DDP adds -- and pekd's own exports (student.pt, best.pt, ema.pt): safetensors files whose metadata
says how to rebuild the model (EXPORT_KEYS), so `load_student(path)` needs nothing else. Torch files are read with
weights_only=True and safetensors holds tensors only: a checkpoint is data, never code to run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from torch import nn

from pekd.errors import PekdError

_WRAPPER_KEYS = ("model", "state_dict")
_DDP_PREFIX = "module."
EXPORT_FORMAT = "pekd-student-1"
# What a pekd export's metadata holds (all strings, as safetensors stores them; mean/std as JSON lists).
EXPORT_KEYS = ("format", "arch", "num_classes", "in_chans", "mean", "std", "pekd_version")


def is_safetensors(path: str) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little endian) and the header's '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path)


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """The flat state dict at `path` (any accepted layout) and a pekd export's metadata (None for other files)."""
    if not os.path.isfile(path):
        raise PekdError(f"checkpoint {path} not found; check the weights path")
    if is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata()
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise PekdError(f"checkpoint {path} could not be read as a safetensors file ({e}); is it complete?") \
                from e
        return _state_dict(state, path), (meta if meta and meta.get("format") == EXPORT_FORMAT else None)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for corrupt or foreign files
        raise PekdError(_unreadable_message(path, e)) from e
    return _state_dict(obj, path), None


def load_weights(model: nn.Module, path: str, *, config_key: str = "teacher.name") -> None:
    """Load the checkpoint at `path` into `model` strictly.

    `config_key` is the setting the user should check when the checkpoint is for another architecture.
    """
    state, meta = read_weights(path)
    arch = getattr(model, "arch", type(model).__name__)
    bad = first_bad_key(model.state_dict(), state)
    if bad is not None:
        what = f" (a pekd export of {meta['arch']})" if meta is not None else ""
        raise PekdError(f"checkpoint {path}{what} does not fit model {arch}: first bad key {bad}; "
                        f"check {config_key}")
    model.load_state_dict(state, strict=True)


def load_student(path: str) -> nn.Module:
    """The model a pekd export describes, ready to run: built, weights loaded, in eval mode, with the input
    normalisation it was trained with as `model.mean` and `model.std` (tuples, one value per channel)."""
    from pekd.models.registry import build_model

    state, meta = read_weights(path)
    if meta is None:
        raise PekdError(f"{path} is not a pekd export (no pekd metadata): it does not say which model it is; "
                        "build the model with pekd.models.build_model and use load_weights")
    model = build_model(meta["arch"], int(meta["num_classes"]), int(meta["in_chans"]))
    bad = first_bad_key(model.state_dict(), state)
    if bad is not None:
        raise PekdError(f"pekd export {path} does not fit its own model {meta['arch']}: first bad key {bad}")
    model.load_state_dict(state, strict=True)
    model.mean, model.std = tuple(json.loads(meta["mean"])), tuple(json.loads(meta["std"]))
    return model.eval()


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


def first_bad_key(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
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
