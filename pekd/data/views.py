"""Augmentation views: the crop box and flip of each sample, as a pure function of a key.

Every pipeline (torch, FFCV, DALI) asks this module for the view of a sample and only *applies* it, so the
same (seed, epoch, index) gives the same crop on every rank, backend and resume. A feature bank stores teacher
features of view k of each sample. An exact bank (the finite augmentations: cifar, flip, none) stores every view,
numbered by pekd.data.view_space; training draws exactly as online and names the drawn view's number. A bank of K
drawn views stores view k re-created from (bank seed, index, k); training picks k from the training (seed, epoch,
index). Either way one bank serves every training seed.

The random numbers come from SplitMix64 run in counter mode over a hash of the key. It is vectorised over
whole batches of indices in plain numpy, needs no generator object per sample, and its output is fixed by
these few lines rather than by a library's stream guarantees.

A box is (top, left, height, width) in the source image's pixels. It may reach outside the image (pad-crop and
center-crop of small images): those pixels are zero. The box is then resized to size x size unless it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pekd.data.view_space import FINITE, offset_counts, view_numbers, view_offsets
from pekd.errors import PekdError

AUGMENTS = ("cifar", "imagenet", "flip", "none")
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
RRC_TRIES = 10
CIFAR_PAD = 4
DRAWS = 4 * RRC_TRIES + 1  # four numbers per RandomResizedCrop try, then the flip

# Domain tags keep the three uses of a key from ever sharing random numbers.
_TAG_EPOCH, _TAG_BANK, _TAG_PICK = 0x51, 0x52, 0x53
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective avalanche of uint64 (wrapping arithmetic is intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(key: tuple[int | np.ndarray, ...], draws: int) -> np.ndarray:
    """`draws` uniform floats in [0, 1) for each element of the broadcast key: float64 [B, draws].

    Key parts are non-negative integers or int arrays (one entry per sample); equal keys give equal numbers.
    """
    parts = np.broadcast_arrays(*(np.atleast_1d(np.asarray(p, dtype=np.int64)) for p in key))
    h = np.zeros(parts[0].shape, dtype=np.uint64)
    for p in parts:
        h = _mix64((h + _GOLDEN) ^ p.astype(np.uint64))
    counters = np.arange(1, draws + 1, dtype=np.uint64) * _GOLDEN
    bits = _mix64(h[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


@dataclass(frozen=True)
class Views:
    """The views of a batch of samples; all fields are arrays of length B."""

    top: np.ndarray
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    flip: np.ndarray  # bool
    view: np.ndarray  # int64: which bank view (0 without a bank)

    def __len__(self) -> int:
        return int(self.top.shape[0])

    def box(self, i: int) -> tuple[int, int, int, int]:
        return int(self.top[i]), int(self.left[i]), int(self.height[i]), int(self.width[i])


def random_resized_boxes(u: np.ndarray, heights: np.ndarray, widths: np.ndarray,
                         scale: tuple[float, float] = RRC_SCALE,
                         ratio: tuple[float, float] = RRC_RATIO) -> tuple[np.ndarray, ...]:
    """torchvision's RandomResizedCrop.get_params, vectorised: first valid of 10 tries, else center fallback.

    u: [B, >= 40] uniforms (4 per try: scale, log-ratio, row, column).
    """
    h = heights.astype(np.float64)
    w = widths.astype(np.float64)
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    tries = u[:, :4 * RRC_TRIES].reshape(-1, RRC_TRIES, 4)
    target = area[:, None] * (scale[0] + tries[..., 0] * (scale[1] - scale[0]))
    aspect = np.exp(log_lo + tries[..., 1] * (log_hi - log_lo))
    cw = np.round(np.sqrt(target * aspect))  # round half to even, as Python's round() in torchvision
    ch = np.round(np.sqrt(target / aspect))
    ok = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
    top = np.floor(tries[..., 2] * (h[:, None] - ch + 1))
    left = np.floor(tries[..., 3] * (w[:, None] - cw + 1))
    first = np.argmax(ok, axis=1)
    rows = np.arange(len(first))
    found = ok[rows, first]

    # Fallback: the whole image, clamped to the ratio range, centered.
    in_ratio = w / h
    fw = np.where(in_ratio < ratio[0], w, np.where(in_ratio > ratio[1], np.round(h * ratio[1]), w))
    fh = np.where(in_ratio < ratio[0], np.round(w / ratio[0]), h)
    pick = [np.where(found, a[rows, first], b) for a, b in
            ((top, (h - fh) // 2), (left, (w - fw) // 2), (ch, fh), (cw, fw))]
    return tuple(p.astype(np.int64) for p in pick)


def pad_crop_boxes(u: np.ndarray, heights: np.ndarray, widths: np.ndarray, size: int,
                   pad: int = CIFAR_PAD) -> tuple[np.ndarray, ...]:
    """RandomCrop(size, padding=pad): a size x size box of the zero-padded image, offsets uniform."""
    ny, nx = offset_counts(heights, widths, size, pad)
    dy = np.floor(u[:, 0] * ny).astype(np.int64)
    dx = np.floor(u[:, 1] * nx).astype(np.int64)
    side = np.full_like(dy, size)
    return dy - pad, dx - pad, side, side


def center_boxes(heights: np.ndarray, widths: np.ndarray, side: np.ndarray | int) -> tuple[np.ndarray, ...]:
    """A centered side x side box (reaching outside images smaller than side), as torchvision's CenterCrop."""
    side = np.broadcast_to(np.asarray(side, dtype=np.int64), heights.shape)
    top = np.round((heights - side) / 2.0).astype(np.int64)
    left = np.round((widths - side) / 2.0).astype(np.int64)
    return top, left, side.copy(), side.copy()


def bank_view_ids(seed: int, epoch: int, index: np.ndarray, bank_views: int) -> np.ndarray:
    """Which of the K stored views each sample shows this epoch: uniform, keyed by (seed, epoch, index)."""
    u = uniforms((_TAG_PICK, seed, epoch, index), 1)[:, 0]
    return np.minimum((u * bank_views).astype(np.int64), bank_views - 1)


class Recipe(Protocol):
    """Turns (epoch, indices, image sizes) into views; pipelines hold one and never draw random numbers."""

    size: int

    def views(self, epoch: int, index: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> Views: ...

    def resamples(self, height: int, width: int) -> bool:
        """Whether boxes of height x width images may need resizing to size x size; when not, every output pixel is
        a source pixel or zero, and a batch is one gather (pekd.data.batch_crop)."""
        ...


@dataclass(frozen=True)
class TrainRecipe:
    """Training augmentation: one of AUGMENTS at output side `size`, keyed by the training seed -- or, with a
    bank's K drawn views, by the bank's seed (the views) and the training seed (which view an epoch shows).

    exact=True (a bank of every view of a finite augmentation): the views are drawn as without a bank, and each
    carries its number in the enumeration (pekd.data.view_space) -- the bank's row of exactly this view.
    replay=True (a bank's precompute): a pass's key is not an epoch but the view number k, and every sample shows
    its view k. Pipelines take the recipe as it is, so precompute decodes and resizes exactly as training does.
    """

    augment: str
    size: int
    seed: int
    bank_views: int = 0
    replay: bool = False
    bank_seed: int = 0
    exact: bool = False

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise PekdError(f"data.augment={self.augment!r} is not one of {list(AUGMENTS)}")
        if self.size <= 0:
            raise PekdError(f"data.image_size={self.size} must be positive")
        if self.replay and self.bank_views <= 0:
            raise PekdError("replaying bank views needs bank.views >= 1")
        if self.exact and self.augment not in FINITE:
            raise PekdError(f"data.augment={self.augment} has a continuous view space: a bank of it holds bank.views "
                            f"drawn views, it cannot hold every view (only {list(FINITE)} can)")

    def resamples(self, height: int, width: int) -> bool:
        """RandomResizedCrop boxes are resized; the pad-crop and center boxes have the output's side already."""
        return self.augment == "imagenet"

    def views(self, epoch: int, index: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> Views:
        index = np.asarray(index, dtype=np.int64)
        heights = np.asarray(heights, dtype=np.int64)
        widths = np.asarray(widths, dtype=np.int64)
        if self.exact and self.replay:  # a replay pass of an exact bank is keyed by the view number
            return self._enumerated(np.full_like(index, epoch), heights, widths)
        if self.bank_views > 0 and not self.exact:
            view = (np.full_like(index, epoch) if self.replay  # a replay pass is keyed by the view number
                    else bank_view_ids(self.seed, epoch, index, self.bank_views))
            u = uniforms((_TAG_BANK, self.bank_seed, index, view), DRAWS)
        else:
            view = np.zeros_like(index)
            u = uniforms((_TAG_EPOCH, self.seed, epoch, index), DRAWS)
        if self.augment == "imagenet":
            box = random_resized_boxes(u, heights, widths)
        elif self.augment == "cifar":
            box = pad_crop_boxes(u, heights, widths, self.size)
        else:
            box = center_boxes(heights, widths, self.size)
        if self.augment == "none":
            flip = np.zeros(len(index), dtype=bool)
        elif self.augment == "flip" and self.bank_views > 0 and not self.exact:
            # Flip-only augmentation has exactly two views; stored as views 0 and 1 (then repeating), a bank of
            # K=2 holds both, and a uniform pick per epoch is the online random flip exactly.
            flip = view % 2 == 1
        else:
            flip = u[:, -1] < 0.5
        if self.exact:  # the drawn view's number: its row in the bank
            _, nx = offset_counts(heights, widths, self.size, CIFAR_PAD)
            view = view_numbers(self.augment, box[0] + CIFAR_PAD, box[1] + CIFAR_PAD, flip, nx)
        return Views(*box, flip=flip, view=view)

    def _enumerated(self, view: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> Views:
        """View number `view` of each sample: the same box and flip as the online draw that names that number."""
        _, nx = offset_counts(heights, widths, self.size, CIFAR_PAD)
        dy, dx, flip = view_offsets(self.augment, view, nx)
        if self.augment == "cifar":
            side = np.full_like(view, self.size)
            box = (dy - CIFAR_PAD, dx - CIFAR_PAD, side, side.copy())
        else:
            box = center_boxes(heights, widths, self.size)
        return Views(*box, flip=flip, view=view)


@dataclass(frozen=True)
class EvalRecipe:
    """Evaluation: torchvision's Resize(resize) then CenterCrop(size) (resize 0: the center crop only).

    A pipeline first resizes the whole image to `resized` (shorter side `resize`, antialiased bilinear), then cuts
    the centered size x size box that `views` gives of the resized image. Two steps, not one box of the original
    resized once: no single box reproduces them (the kernel of the resize of the whole image reaches past the crop
    and its scale is resize / shorter, not size / box), and that shortcut moved pixels by up to 28 grey levels
    (tests/test_eval_transform.py) -- more than an ImageNet comparison of tenths of a point can ignore.
    """

    size: int
    resize: int = 0

    def __post_init__(self) -> None:
        if self.resize and self.resize < self.size:
            raise PekdError(f"data.eval_resize={self.resize} is smaller than data.image_size={self.size}; "
                            "the center crop must fit in the resized image (ImageNet: 256 and 224)")

    def resized(self, heights: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each image's size after Resize(resize), by torchvision's rule: the shorter side becomes `resize`, the
        longer int(resize * longer / shorter) (truncated); unchanged when resize is 0."""
        heights = np.asarray(heights, dtype=np.int64)
        widths = np.asarray(widths, dtype=np.int64)
        if not self.resize:
            return heights, widths
        short, long = np.minimum(heights, widths), np.maximum(heights, widths)
        long = (self.resize * long / short).astype(np.int64)
        return np.where(heights <= widths, self.resize, long), np.where(heights <= widths, long, self.resize)

    def resamples(self, height: int, width: int) -> bool:
        """Whether images of height x width are resized before the crop (the crop itself is never resized)."""
        return bool(self.resize) and min(height, width) != self.resize

    def views(self, epoch: int, index: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> Views:
        """The center crops of images of these sizes -- with a resize, of the images as `resized` made them."""
        n = len(np.atleast_1d(index))
        return Views(*center_boxes(np.asarray(heights, dtype=np.int64), np.asarray(widths, dtype=np.int64),
                                   self.size), flip=np.zeros(n, dtype=bool), view=np.zeros(n, dtype=np.int64))
