"""DALI pipeline: pekd feeds encoded files in its own order; DALI decodes, crops, resizes and flips.

Order: `fn.readers.file` shards by position in a file list and shuffles with its own RNG, so it cannot follow
a permutation that must survive resumes on another world size. Instead an `external_source` hands DALI this
rank's micro-batches from `rank_micro_batches` (global-rank sharding is already in them), with each sample's
crop window and flip from pekd.data.views. A pass (an epoch from a start step, or an eval pass) ends when the
feed does (external_source's cycle="raise"), so prefetching never crosses into an order that is not chosen yet,
and the last eval batch is exactly the rest of the shard. The pipeline is built once (building one starts its
threads and allocates its buffers) and reset between passes, after the next pass's batches are handed to the
feed; only a pass cut short (its prefetched batches belong to it) or failed costs a new one.

Views need each image's size before DALI decodes it; the feed reads it from the file header with PIL (no
pixels are decoded), which also catches files that are not images at all before DALI sees them.
Train views that lie inside the image (RandomResizedCrop) use `decoders.image_slice`, which decodes only the
window's rows; pad-crops decode whole images and `fn.slice` pads with zeros. Evaluation with a resize does as
torchvision: the whole image resized to EvalRecipe.resized (DALI's antialiased linear resize), then the center
crop cut from it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from pekd.data.batch import Batch
from pekd.data.order import Plan, epoch_permutation, eval_shard, rank_micro_batches, steps_per_epoch
from pekd.data.sources import Source
from pekd.data.torch_pipeline import Corrupt, CorruptPolicy
from pekd.data.views import EvalRecipe, Recipe, TrainRecipe
from pekd.errors import PekdError

OUTPUTS = ["images", "labels", "index", "view"]
PREFETCH = 2  # DALI's default prefetch_queue_depth: batches that may be in flight when one fails


def check_device(device: str) -> None:
    """dali_device=mixed decodes on the GPU; say so plainly when there is none."""
    if device not in ("cpu", "mixed"):
        raise PekdError(f"data.dali_device={device!r} is not one of ['cpu', 'mixed']")
    if device == "mixed" and not torch.cuda.is_available():
        raise PekdError("data.dali_device=mixed decodes on the GPU, but CUDA is not available; set "
                        "data.dali_device=cpu (or data.pipeline=torch)")


def dali_reason(e: Exception) -> str:
    """The line of a DALI error that says what went wrong (it follows 'encountered:')."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    after = [lines[k + 1] for k, x in enumerate(lines[:-1]) if x.startswith("encountered")]
    return (after or lines or [type(e).__name__])[0]


def windows_inside(recipe: Recipe) -> bool:
    """Whether every view of this recipe lies inside its image, so image_slice's ROI decode can be used."""
    return isinstance(recipe, TrainRecipe) and recipe.augment == "imagenet"


def resizes_first(recipe: Recipe) -> bool:
    """Whether the whole image is resized before its view is cut (evaluation's Resize then CenterCrop)."""
    return isinstance(recipe, EvalRecipe) and recipe.resize > 0


class Feed:
    """One pass of micro-batches for external_source: encoded bytes (or arrays), windows, flips, ids -- and where
    the recipe `resizes_first`, the size to resize each image to before its window (of the resized image) is cut.

    Files whose header PIL cannot read are left out of their batch and listed in `corrupt`; `skip` holds files
    to leave out because DALI failed on them earlier in this pass.
    """

    def __init__(self, source: Source, recipe: Recipe, epoch: int, batches: list[np.ndarray],
                 skip: set[int]):
        self.source, self.recipe, self.epoch, self.batches, self.skip = source, recipe, epoch, batches, skip
        self.corrupt: list[Corrupt] = []

    def _read(self, i: int) -> tuple[np.ndarray, int, int] | None:
        if self.source.arrays is not None:
            img = self.source.arrays[i]
            return img, img.shape[0], img.shape[1]
        assert self.source.paths is not None
        path = self.source.paths[i]
        try:
            data = np.fromfile(path, dtype=np.uint8)
            with Image.open(io.BytesIO(data.tobytes())) as im:
                w, h = im.size
        except (OSError, SyntaxError, ValueError) as e:
            self.corrupt.append(Corrupt(path, f"not a readable image: {e}"))
            return None
        return data, h, w

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for batch in self.batches:
            items, keep = [], []
            for i in batch.tolist():
                got = None if i in self.skip else self._read(i)
                if got is not None:
                    items.append(got)
                    keep.append(i)
            idx = np.asarray(keep, dtype=np.int64)
            hs = np.asarray([h for _, h, _ in items], dtype=np.int64)
            ws = np.asarray([w for _, _, w in items], dtype=np.int64)
            first = resizes_first(self.recipe)
            if first:
                assert isinstance(self.recipe, EvalRecipe)
                hs, ws = self.recipe.resized(hs, ws)
            v = self.recipe.views(self.epoch, idx, hs, ws)
            anchor = np.stack([v.top, v.left], 1).astype(np.float32)
            shape = np.stack([v.height, v.width], 1).astype(np.float32)
            yield ([d for d, _, _ in items], list(anchor), list(shape), list(v.flip.astype(np.int32)),
                   list(self.source.labels[idx][:, None]), list(idx[:, None]), list(v.view[:, None]),
                   *([list(np.stack([hs, ws], 1).astype(np.float32))] if first else []))


def build_pipeline(feed: Feed, *, batch_size: int, workers: int, device: str, encoded: bool,
                   inside: bool, first: bool, size: int, gray: bool) -> Any:
    """A DALI pipeline over `feed`: decode (CPU or mixed), crop the window, resize to size, flip, CHW uint8; with
    `first`, resize the whole image to the fed size, then crop the window (of the output's size)."""
    from nvidia.dali import fn, pipeline_def, types

    # mixed decodes on this process's own GPU (pekd.engine.distributed selected it from LOCAL_RANK): device 0 on
    # every rank would pile every rank's decoding onto one GPU and hand the others tensors from the wrong device
    @pipeline_def(batch_size=batch_size, num_threads=max(1, workers), prefetch_queue_depth=PREFETCH,
                  device_id=torch.cuda.current_device() if device == "mixed" else None)
    def pipe():
        dtype = [types.UINT8, types.FLOAT, types.FLOAT, types.INT32, types.INT64, types.INT64, types.INT64]
        if first:
            dtype.append(types.FLOAT)  # the size to resize to first: fed only where used (DALI warns otherwise)
        data, anchor, shape, flip, labels, index, view, *resized = fn.external_source(
            source=feed, num_outputs=len(dtype), batch=True, cycle="raise", dtype=dtype)
        window = {"axis_names": "HW", "normalized_anchor": False, "normalized_shape": False}
        out_type = types.GRAY if gray else types.RGB
        decode = {"device": device, "output_type": out_type, "adjust_orientation": False,
                  "jpeg_fancy_upsampling": True}  # as torchvision: no EXIF rotation, libjpeg's upsampling
        linear = {"antialias": True, "interp_type": types.INTERP_LINEAR}
        if first:
            images = fn.decoders.image(data, **decode) if encoded else data
            images = fn.slice(fn.resize(images, size=resized[0], **linear), anchor, shape, **window)
        elif not encoded:
            images = fn.slice(data, anchor, shape, out_of_bounds_policy="pad", fill_values=0, **window)
        elif inside:
            images = fn.decoders.image_slice(data, anchor, shape, **window, **decode)
        else:
            images = fn.slice(fn.decoders.image(data, **decode), anchor, shape, out_of_bounds_policy="pad",
                              fill_values=0, **window)
        if not first:
            images = fn.resize(images, size=[size, size], **linear)
        images = fn.crop_mirror_normalize(images, mirror=flip, dtype=types.UINT8, output_layout="CHW")
        return images, labels, index, view

    p = pipe()
    p.build()
    return p


class DaliPasses:
    """Runs passes (ordered micro-batch lists) through one DALI pipeline and yields Batches (with their bank rows
    when `rows` is given)."""

    def __init__(self, source: Source, recipe: Recipe, *, batch_size: int, workers: int, device: str,
                 on_corrupt: str, rows: Callable[[Batch], Batch] | None = None):
        check_device(device)
        if source.paths is None and source.arrays is None:
            raise PekdError(f"source {source.name} has neither files nor arrays for DALI to read")
        self.source, self.recipe, self.batch_size = source, recipe, batch_size
        self.workers, self.device = workers, device
        self.corrupt = CorruptPolicy(on_corrupt)
        self.failed: set[int] = set()  # indices DALI could not decode; left out when on_corrupt=skip
        self.rows = rows
        self.feed = Feed(source, recipe, 0, [], self.failed)  # its pass is swapped in before each run
        self.iterator: Any = None  # a DALIGenericIterator whose last pass ended, or None: build one

    def _start(self) -> Any:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if self.iterator is not None:
            self.iterator.reset()  # the feed starts over, on the pass just handed to it
            return self.iterator
        pipe = build_pipeline(self.feed, batch_size=self.batch_size, workers=self.workers, device=self.device,
                              encoded=self.source.paths is not None, inside=windows_inside(self.recipe),
                              first=resizes_first(self.recipe),
                              size=self.recipe.size, gray=self.source.in_chans == 1)
        # The feed ends the pass with StopIteration, so every batch is exactly what it fed: PARTIAL states that
        # no sample is padded or dropped (size=-1 leaves the policy nothing to trim).
        self.iterator = DALIGenericIterator(pipe, OUTPUTS, last_batch_policy=LastBatchPolicy.PARTIAL,
                                           prepare_first_batch=False)
        return self.iterator

    def run(self, epoch: int, batches: list[np.ndarray]) -> Iterator[Batch]:
        pos = 0
        while pos < len(batches):
            feed = self.feed
            feed.epoch, feed.batches, feed.corrupt = epoch, batches[pos:], []
            it = self._start()
            reported, finished = 0, False
            try:
                for out in it:
                    self.corrupt.check(feed.corrupt[reported:])
                    reported = len(feed.corrupt)
                    d = out[0]
                    batch = Batch(d["images"], *(d[k].reshape(-1).to(torch.int64) for k in OUTPUTS[1:]))
                    yield batch if self.rows is None else self.rows(batch)
                    pos += 1
                finished = True
                self.corrupt.check(feed.corrupt[reported:])
            except RuntimeError as e:
                bad = self._undecodable(batches[pos:pos + PREFETCH + 1])
                if not bad:
                    raise PekdError(f"DALI failed ({dali_reason(e)}); data.pipeline=torch names unreadable "
                                    "files") from None
                self.corrupt.check([Corrupt(self.source.paths[i], "DALI cannot decode it") for i in bad])
                self.failed.update(bad)
            finally:
                if not finished:  # cut short or failed: what the pipeline prefetched belongs to this pass
                    self.iterator = None

    def _undecodable(self, batches: list[np.ndarray]) -> list[int]:
        """Indices in these batches that torchvision cannot decode either (DALI's error names no file)."""
        from torchvision.io import decode_image, read_file

        if self.source.paths is None:
            return []
        bad = []
        for i in np.concatenate(batches).tolist() if batches else []:
            try:
                decode_image(read_file(self.source.paths[i]))
            except (RuntimeError, OSError):
                bad.append(i)
        return bad


class DaliTrainLoader:
    """This rank's micro-batches, in pekd's global order, decoded and augmented by DALI."""

    def __init__(self, source: Source, recipe: Recipe, *, plan: Plan, rank: int, seed: int, workers: int,
                 device: str = "cpu", on_corrupt: str = "error", rows: Callable[[Batch], Batch] | None = None):
        self.n, self.plan, self.rank, self.seed = len(source), plan, rank, seed
        self.steps_per_epoch = steps_per_epoch(self.n, plan.global_batch)
        self.passes = DaliPasses(source, recipe, batch_size=plan.micro, workers=workers, device=device,
                                 on_corrupt=on_corrupt, rows=rows)

    @property
    def skipped(self) -> list[str]:
        """Paths of the corrupt images skipped so far (on_corrupt=skip); their batches come out smaller."""
        return self.passes.corrupt.skipped

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        perm = epoch_permutation(self.n, self.seed, epoch)
        return self.passes.run(epoch, rank_micro_batches(perm, self.plan, self.rank, start_step))


class DaliEvalLoader:
    """This rank's contiguous eval shard through DALI; the last batch is the exact remainder."""

    def __init__(self, source: Source, recipe: Recipe, *, rank: int, world: int, batch_size: int, workers: int,
                 device: str = "cpu", on_corrupt: str = "error"):
        shard = eval_shard(len(source), rank, world)
        self.batches = [shard[s:s + batch_size] for s in range(0, len(shard), batch_size)]
        self.passes = DaliPasses(source, recipe, batch_size=batch_size, workers=workers, device=device,
                                 on_corrupt=on_corrupt)

    def __iter__(self) -> Iterator[Batch]:
        return self.passes.run(0, self.batches)
