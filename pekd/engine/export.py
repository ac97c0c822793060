"""The exported student (student.pt, best.pt, ema.pt): its weights alone -- projectors are training-time only --
as a safetensors file whose metadata says how to rebuild it (pekd.models.loading.EXPORT_KEYS: architecture,
classes, input channels, the input normalisation, pekd's version). `pekd.models.load_student(path)` returns the
ready model; load_weights, teacher.weights= and pekd.analyze read it like any state dict. The names keep the .pt
suffix every earlier run directory and command line uses; the content is safetensors (no pickle)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from safetensors.torch import save
from torch import nn

import pekd
from pekd.engine.files import atomic_write_bytes
from pekd.models.loading import EXPORT_FORMAT


def export_metadata(model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, str]:
    """What rebuilds `model` (built by pekd.models.build_model: it carries `arch` and `num_classes`); one mean
    and std per input channel."""
    return {"format": EXPORT_FORMAT, "arch": str(model.arch), "num_classes": str(model.num_classes),
            "in_chans": str(len(mean)), "mean": json.dumps(list(mean)), "std": json.dumps(list(std)),
            "pekd_version": pekd.__version__, "pekd_git": _revision()}


@functools.cache
def _revision() -> str:
    """The git revision, once per process (an export is written every epoch)."""
    from pekd.engine.rundir import git_revision

    return git_revision()


def export_student(model: nn.Module, path: Path, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Write atomically (a reader never sees half a file). Tensors are stored contiguous: a channels_last
    weight holds the same values in the standard layout."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=export_metadata(model, mean, std)))
