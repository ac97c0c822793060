"""Pick the pipeline named by data.pipeline; every backend yields the same Batches in the same global order.

The backends only differ in who decodes and resizes, and where (device: in device memory, from images kept there).
The order comes from pekd.data.order and the crop and flip of every sample from pekd.data.views, so switching
backends (or resuming on another world size) changes throughput, not the samples a run sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np

from pekd.config import DataConfig
from pekd.data.batch import Batch
from pekd.data.extras import require
from pekd.data.order import Plan
from pekd.data.sources import Source
from pekd.data.views import EvalRecipe, TrainRecipe
from pekd.errors import PekdError

PIPELINES = ("torch", "ffcv", "dali", "device")


class TrainLoader(Protocol):
    """One rank's view of training data."""

    steps_per_epoch: int  # optimizer steps (global batches) per epoch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """This rank's micro-batches from global step start_step on; accum consecutive ones make one step."""
        ...


class Passes(Protocol):
    """Replays of chosen samples: run(key, batches) yields the batches in order, each sample viewed by the
    recipe under `key` (for a bank's precompute: the view number)."""

    def run(self, key: int, batches: list[np.ndarray]) -> Iterator[Batch]: ...


def _check_pipeline(cfg: DataConfig) -> None:
    if cfg.pipeline not in PIPELINES:
        raise PekdError(f"data.pipeline={cfg.pipeline!r} is not one of {list(PIPELINES)}")
    require(cfg.pipeline)


def build_train_loader(source: Source, cfg: DataConfig, *, plan: Plan, rank: int, seed: int,
                       bank_views: int = 0, bank_seed: int = 0, exact: bool = False,
                       rows: Callable[[Batch], Batch] | None = None) -> TrainLoader:
    """The training loader of this rank. bank_views K > 0: each sample shows one of the K views keyed by
    bank_seed (the training seed picks which) -- or, exact, the view the online pipeline draws, numbered among
    all K. rows: attaches a feature bank's rows to each batch (pekd.teacher.bank.BankRows), applied by the
    pipeline so that they travel with the images."""
    _check_pipeline(cfg)
    recipe = TrainRecipe(cfg.augment, cfg.image_size, seed, bank_views, bank_seed=bank_seed, exact=exact)
    if cfg.pipeline == "ffcv":
        from pekd.data.ffcv_pipeline import FfcvTrainLoader

        return FfcvTrainLoader(source, recipe, cfg.train_beton, plan=plan, rank=rank, seed=seed,
                               workers=cfg.workers, os_cache=cfg.os_cache, rows=rows)
    if cfg.pipeline == "dali":
        from pekd.data.dali_pipeline import DaliTrainLoader

        return DaliTrainLoader(source, recipe, plan=plan, rank=rank, seed=seed, workers=cfg.workers,
                               device=cfg.dali_device, on_corrupt=cfg.on_corrupt, rows=rows)
    if cfg.pipeline == "device":
        from pekd.data.device_pipeline import DeviceTrainLoader

        return DeviceTrainLoader(source, recipe, plan=plan, rank=rank, seed=seed, rows=rows)
    from pekd.data.torch_pipeline import TorchTrainLoader

    return TorchTrainLoader(source, recipe, plan=plan, rank=rank, seed=seed, workers=cfg.workers,
                            on_corrupt=cfg.on_corrupt, rows=rows)


def build_view_passes(source: Source, cfg: DataConfig, *, bank_seed: int, bank_views: int,
                      batch_size: int, exact: bool = False) -> Passes:
    """A bank's precompute reader: run(k, batches) shows view k (keyed by bank_seed, or exact: the k-th of every
    view) of each sample, decoded, cropped and resized by the backend data.pipeline names -- the one training will
    read the same samples with."""
    _check_pipeline(cfg)
    recipe = TrainRecipe(cfg.augment, cfg.image_size, 0, bank_views, replay=True, bank_seed=bank_seed, exact=exact)
    if cfg.pipeline == "ffcv":
        from pekd.data.ffcv_pipeline import FfcvPasses

        return FfcvPasses(source, recipe, cfg.train_beton, batch_size=batch_size, workers=cfg.workers,
                          os_cache=cfg.os_cache)
    if cfg.pipeline == "dali":
        from pekd.data.dali_pipeline import DaliPasses

        return DaliPasses(source, recipe, batch_size=batch_size, workers=cfg.workers, device=cfg.dali_device,
                          on_corrupt=cfg.on_corrupt)
    if cfg.pipeline == "device":
        from pekd.data.device_pipeline import DevicePasses, resident_device

        return DevicePasses(source, recipe, resident_device())
    from pekd.data.torch_pipeline import TorchPasses

    return TorchPasses(source, recipe, workers=cfg.workers, on_corrupt=cfg.on_corrupt)


def pixels_identity(cfg: DataConfig) -> str:
    """Who makes the training pixels: backends crop the same boxes but decode and resize with their own kernels
    (and an FFCV .beton may hold downscaled or re-encoded images), so a bank is tied to this."""
    _check_pipeline(cfg)
    if cfg.pipeline == "dali":
        return f"dali (dali_device={cfg.dali_device})"
    if cfg.pipeline == "ffcv":
        from pekd.data.ffcv_pipeline import beton_settings

        return f"ffcv ({beton_settings(cfg.train_beton)})"
    return "torch"  # data.pipeline=device makes the same bytes: its crops need no resize, each pixel is a copy


def build_eval_loader(source: Source, cfg: DataConfig, *, rank: int, world: int) -> Iterable[Batch]:
    """This rank's eval shard (contiguous, unpadded), re-iterable, center-cropped/resized per cfg, uint8."""
    _check_pipeline(cfg)
    recipe = EvalRecipe(cfg.image_size, cfg.eval_resize)
    if cfg.pipeline == "ffcv":
        from pekd.data.ffcv_pipeline import FfcvEvalLoader

        return FfcvEvalLoader(source, recipe, cfg.val_beton, rank=rank, world=world,
                              batch_size=cfg.eval_batch_size, workers=cfg.workers, os_cache=cfg.os_cache)
    if cfg.pipeline == "dali":
        from pekd.data.dali_pipeline import DaliEvalLoader

        return DaliEvalLoader(source, recipe, rank=rank, world=world, batch_size=cfg.eval_batch_size,
                              workers=cfg.workers, device=cfg.dali_device, on_corrupt=cfg.on_corrupt)
    if cfg.pipeline == "device":
        from pekd.data.device_pipeline import DeviceEvalLoader

        return DeviceEvalLoader(source, recipe, rank=rank, world=world, batch_size=cfg.eval_batch_size)
    from pekd.data.torch_pipeline import TorchEvalLoader

    return TorchEvalLoader(source, recipe, rank=rank, world=world, batch_size=cfg.eval_batch_size,
                           workers=cfg.workers, on_corrupt=cfg.on_corrupt)
