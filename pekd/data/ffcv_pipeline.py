"""FFCV pipeline: reads a .beton written by `python -m pekd.write_dataset` in pekd's global order.

Order: a TraversalOrder hands FFCV this rank's flat index list from `rank_micro_batches` (the loader's
`distributed` flag stays off: sharding is already in that list), so FFCV never draws an order of its own.

Views: FFCV's RandomResizedCrop decoder draws from numba's global RNG, which cannot be replayed. Here a jitted
decoder only decodes each record into a scratch buffer; the next, non-jitted operation asks pekd.data.views for
the batch's crop boxes and flips (it knows the record ids and the current epoch), then crops (zero outside the
image), resizes with OpenCV's INTER_AREA (as FFCV's own decoders do) and flips, on a thread pool. Evaluation with
a resize does as torchvision: the whole image resized to EvalRecipe.resized (INTER_AREA), then the center crop
cut from it.

The .beton stores each record's source index and original size: views are drawn in original-image pixels,
exactly as the torch pipeline does, and scaled to the stored image when write_dataset downscaled it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.libffcv import imdecode, memcpy
from ffcv.loader import Loader
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.pipeline_spec import PipelineSpec
from ffcv.pipeline.state import State
from ffcv.reader import Reader
from ffcv.traversal_order.base import TraversalOrder

from pekd.data.batch import Batch
from pekd.data.order import Plan, epoch_permutation, eval_shard, rank_micro_batches, steps_per_epoch
from pekd.data.sources import Source
from pekd.data.views import EvalRecipe, Recipe
from pekd.errors import PekdError

FIELDS = ("image", "label", "index", "height", "width")  # height/width: of the original image
FORMAT = "pekd-beton-1"
JPEG_MODE = 0  # ffcv.fields.rgb_image.IMAGE_MODES['jpg']


def sidecar(beton: str | Path) -> Path:
    """The JSON next to a .beton that says which source and fields it holds."""
    return Path(f"{beton}.json")


def manifest(source: Source) -> dict[str, Any]:
    """What a .beton must have been written from to serve `source`."""
    return {"format": FORMAT, "fields": list(FIELDS), "source": source.identity()}


def check_beton(path: str, source: Source, key: str) -> None:
    """Refuse a missing .beton, or one written from another source or with other fields, with the fix."""
    write = (f"write it with `python -m pekd.write_dataset --source {source.name} --root <root> "
             f"--split {source.split} --out {path or '<file>.beton'}`")
    if not path:
        raise PekdError(f"data.pipeline=ffcv needs {key}; {write}")
    if not Path(path).is_file():
        raise PekdError(f"{key}={path!r} does not exist; {write}")
    side = sidecar(path)
    if not side.is_file():
        raise PekdError(f"{key}={path!r} has no {side.name} next to it, so it was not written by "
                        f"pekd.write_dataset (or was copied without it); {write}")
    try:
        found = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PekdError(f"{str(side)!r} is unreadable ({e}); {write}") from None
    want = manifest(source)
    if found.get("format") != FORMAT or found.get("fields") != want["fields"]:
        raise PekdError(f"{key}={path!r} holds fields {found.get('fields')} in format {found.get('format')!r}, "
                        f"pekd needs {want['fields']} ({FORMAT}); {write}")
    if found.get("source") != want["source"]:
        raise PekdError(f"{key}={path!r} was written from {found.get('source')}, but the run reads "
                        f"{want['source']}; point {key} at the matching file or {write}")


def beton_settings(path: str) -> str:
    """How a .beton's images were written (they are the pixels training decodes), from its sidecar."""
    try:
        found = json.loads(sidecar(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PekdError(f"data.train_beton={path!r}: cannot read its {sidecar(path).name} ({e}); write it with "
                        "`python -m pekd.write_dataset`") from None
    return ", ".join(f"{k}={found.get(k)}" for k in ("write_mode", "jpeg_quality", "max_resolution"))


def crop_resize_flip(image: np.ndarray, box: np.ndarray, flip: bool, out: np.ndarray,
                     first: np.ndarray | None = None) -> None:
    """Crop image (H x W x 3) to box = (top, left, h, w), zeros outside, resize into out (INTER_AREA), flip;
    `first` = (height, width): resize the whole image to it before cropping (evaluation's Resize), with INTER_AREA
    when it shrinks and INTER_LINEAR when it enlarges: of OpenCV's kernels, the nearest to torchvision's antialiased
    bilinear each way (INTER_AREA enlarging a 64 px image to 256 differs from it by up to 21 grey levels, INTER_LINEAR
    by 1; shrinking, INTER_LINEAR does not antialias).

    OpenCV releases the GIL, so a thread pool runs these in parallel without compiling anything.
    """
    if first is not None and tuple(first) != image.shape[:2]:
        shrinks = first[0] * first[1] < image.shape[0] * image.shape[1]
        image = cv2.resize(image, (int(first[1]), int(first[0])),
                           interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR)
    top, left, height, width = (int(x) for x in box)
    h, w = image.shape[:2]
    r0, r1, c0, c1 = max(top, 0), min(top + height, h), max(left, 0), min(left + width, w)
    if (r0, r1, c0, c1) == (top, top + height, left, left + width):
        crop = image[top:top + height, left:left + width]
    else:
        crop = np.zeros((height, width, 3), dtype=np.uint8)
        if r0 < r1 and c0 < c1:
            crop[r0 - top:r1 - top, c0 - left:c1 - left] = image[r0:r1, c0:c1]
    if crop.shape[:2] == out.shape[:2]:
        out[...] = crop[:, ::-1] if flip else crop
        return
    cv2.resize(crop, out.shape[1::-1], dst=out, interpolation=cv2.INTER_AREA)
    if flip:
        cv2.flip(out, 1, dst=out)


class DecodeFull(Operation):
    """Decode each record whole (JPEG or raw) into a per-sample scratch buffer of the largest stored size."""

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        biggest = int(self.metadata["height"].max()) * int(self.metadata["width"].max()) * 3
        return (replace(previous_state, jit_mode=True, shape=(biggest,), dtype=np.dtype("u1")),
                AllocationQuery((biggest,), np.dtype("u1")))

    def generate_code(self):
        mem_read = self.memory_read
        decode_jpeg = Compiler.compile(imdecode)
        copy = Compiler.compile(memcpy)
        each = Compiler.get_iterator()

        def decode(batch_indices, destination, metadata, storage_state):
            for k in each(len(batch_indices)):
                field = metadata[batch_indices[k]]
                data = mem_read(field["data_ptr"], storage_state)
                h, w = field["height"], field["width"]
                if field["mode"] == JPEG_MODE:
                    decode_jpeg(data, destination[k], h, w, h, w, 0, 0, 1, 1, False, False)
                else:
                    copy(data, destination[k][:h * w * 3])
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class ApplyViews(Operation):
    """Crop, resize and flip each decoded record by the view pekd.data.views gives it this epoch."""

    def __init__(self, recipe: Recipe, orig_heights: np.ndarray, orig_widths: np.ndarray, threads: int):
        super().__init__()
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="pekd-ffcv-views")
        self.recipe = recipe
        self.orig_heights, self.orig_widths = orig_heights, orig_widths
        self.epoch = 0

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, AllocationQuery]:
        shape = (self.recipe.size, self.recipe.size, 3)
        return (replace(previous_state, jit_mode=False, shape=shape, dtype=np.dtype("u1")),
                AllocationQuery(shape, np.dtype("u1")))

    def generate_code(self):
        def apply(scratch: np.ndarray, out: np.ndarray, indices: np.ndarray) -> np.ndarray:
            idx = np.asarray(indices, dtype=np.int64)
            oh, ow = self.orig_heights[idx], self.orig_widths[idx]
            sh = self.metadata["height"][idx].astype(np.int64)
            sw = self.metadata["width"][idx].astype(np.int64)
            images = [scratch[k][:sh[k] * sw[k] * 3].reshape(sh[k], sw[k], 3) for k in range(len(idx))]
            first = None
            if isinstance(self.recipe, EvalRecipe) and self.recipe.resize:  # views of the resized image
                oh, ow = sh, sw = self.recipe.resized(oh, ow)
                first = np.stack([sh, sw], 1)
            v = self.recipe.views(self.epoch, idx, oh, ow)
            fy, fx = sh / oh, sw / ow  # 1 unless write_dataset downscaled the image
            boxes = np.stack([np.floor(v.top * fy + 0.5), np.floor(v.left * fx + 0.5),
                              np.maximum(np.round(v.height * fy), 1), np.maximum(np.round(v.width * fx), 1)],
                             axis=1).astype(np.int64)
            list(self.pool.map(crop_resize_flip, images, boxes, v.flip, out[:len(idx)],
                               [None] * len(idx) if first is None else first))
            return out[:len(idx)]

        apply.with_indices = True
        return apply


class GlobalOrder(TraversalOrder):
    """Hands FFCV the order pekd chose; FFCV instantiates custom orders by calling them with the loader."""

    def __init__(self, order: np.ndarray):
        self.order = order

    def __call__(self, loader: Loader) -> GlobalOrder:
        self.loader = loader
        return self

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.order


class FfcvReader:
    """An FFCV Loader over a checked .beton, yielding Batches copied out of FFCV's reused buffers."""

    def __init__(self, source: Source, recipe: Recipe, path: str, key: str, order: np.ndarray, batch_size: int,
                 workers: int, os_cache: bool, drop_last: bool):
        check_beton(path, source, key)
        self.in_chans = source.in_chans
        self.order = GlobalOrder(order.astype(np.uint64))
        self.capacity = len(order)  # FFCV sizes every epoch by the order it was built with: later ones may be shorter
        orig = self._original_sizes(path, key)
        self.views = ApplyViews(recipe, *orig, threads=max(1, workers))
        self.loader = Loader(path, batch_size=batch_size, num_workers=max(1, workers), os_cache=os_cache,
                             order=self.order, drop_last=drop_last,
                             pipelines={"image": PipelineSpec("image", DecodeFull(), [self.views]),
                                        "label": [IntDecoder()], "index": [IntDecoder()],
                                        "height": None, "width": None})

    @staticmethod
    def _original_sizes(path: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Each record's original height and width, from the .beton's metadata (nothing is decoded)."""
        try:
            reader = Reader(path)
        except (AssertionError, ValueError, OSError) as e:  # FFCV's format check is an assert
            raise PekdError(f"{key}={path!r} is not a readable .beton ({e}); rewrite it with "
                            "`python -m pekd.write_dataset`") from None
        if tuple(reader.field_names) != FIELDS:
            raise PekdError(f"{key}={path!r} has fields {reader.field_names}, expected {list(FIELDS)}; "
                            "rewrite it with `python -m pekd.write_dataset`")
        meta = reader.metadata
        return (np.asarray(meta[f"f{FIELDS.index('height')}"], dtype=np.int64),
                np.asarray(meta[f"f{FIELDS.index('width')}"], dtype=np.int64))

    def run(self, order: np.ndarray, epoch: int) -> Iterator[Batch]:
        if len(order) > self.capacity:
            raise ValueError(f"an FFCV reader built for {self.capacity} samples cannot run {len(order)}")
        self.order.order = order.astype(np.uint64)
        self.views.epoch = epoch
        it = iter(self.loader)
        try:
            for images, labels, index in it:
                idx = index.reshape(-1).astype(np.int64)
                view = self.views.recipe.views(epoch, idx, self.views.orig_heights[idx],
                                               self.views.orig_widths[idx]).view
                # one copy out of FFCV's reused buffer, kept in FFCV's NHWC layout: the permuted view is an NCHW
                # tensor in channels_last memory, which the trainer's channels_last input needs no copy for
                # (an NCHW-contiguous copy here would be transposed back on the GPU every micro-batch)
                x = torch.from_numpy(images[..., :self.in_chans]).clone(memory_format=torch.contiguous_format)
                yield Batch(x.permute(0, 3, 1, 2), torch.from_numpy(labels.reshape(-1).astype(np.int64)),
                            torch.from_numpy(idx), torch.from_numpy(view))
        finally:
            it.close()


class FfcvTrainLoader:
    """This rank's micro-batches from a .beton, in pekd's global order, with pekd's views."""

    def __init__(self, source: Source, recipe: Recipe, path: str, *, plan: Plan, rank: int, seed: int,
                 workers: int, os_cache: bool = True, rows: Callable[[Batch], Batch] | None = None):
        self.n, self.plan, self.rank, self.seed = len(source), plan, rank, seed
        self.rows = rows  # a feature bank's rows, attached as each batch is handed over
        self.steps_per_epoch = steps_per_epoch(self.n, plan.global_batch)
        self.reader = FfcvReader(source, recipe, path, "data.train_beton", self._order(0, 0), plan.micro,
                                 workers, os_cache, drop_last=True)

    def _order(self, epoch: int, start_step: int) -> np.ndarray:
        micro = rank_micro_batches(epoch_permutation(self.n, self.seed, epoch), self.plan, self.rank, start_step)
        return np.concatenate(micro) if micro else np.zeros(0, dtype=np.int64)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        batches = self.reader.run(self._order(epoch, start_step), epoch)
        return batches if self.rows is None else map(self.rows, batches)


class FfcvEvalLoader:
    """This rank's contiguous eval shard from a .beton, last batch kept partial."""

    def __init__(self, source: Source, recipe: Recipe, path: str, *, rank: int, world: int, batch_size: int,
                 workers: int, os_cache: bool = True):
        self.shard = eval_shard(len(source), rank, world)
        self.reader = FfcvReader(source, recipe, path, "data.val_beton", self.shard, batch_size, workers,
                                 os_cache, drop_last=False)

    def __iter__(self) -> Iterator[Batch]:
        return self.reader.run(self.shard, 0)


class FfcvPasses:
    """Passes over given index batches under one key (a bank's view number): a bank's precompute reads the
    .beton exactly as training does. Batches must all hold batch_size samples but the last (FFCV cuts them)."""

    def __init__(self, source: Source, recipe: Recipe, path: str, *, batch_size: int, workers: int,
                 os_cache: bool = True):
        self.batch_size = batch_size
        self.reader = FfcvReader(source, recipe, path, "data.train_beton", np.arange(len(source)), batch_size,
                                 workers, os_cache, drop_last=False)

    def run(self, key: int, batches: list[np.ndarray]) -> Iterator[Batch]:
        if any(len(b) != self.batch_size for b in batches[:-1]):
            raise ValueError(f"FFCV cuts batches of {self.batch_size}: only the last may be smaller")
        return self.reader.run(np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64), key)
