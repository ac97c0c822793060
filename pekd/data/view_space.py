"""The finite view spaces of the training augmentations, numbered: what an exact feature bank stores.

CIFAR's RandomCrop(32, padding=4) + flip has (32 + 2 x 4 - 32 + 1)^2 = 81 crop offsets x 2 flips = 162 views of a
32 x 32 image; flip-only has 2 (the center box, flipped or not); none has 1. RandomResizedCrop's space is
continuous and has no numbering. A bank that stores the teacher's feature of every view of every sample lets
training show the very view the online pipeline draws for (seed, epoch, index) and read its row: a bank run is
then the online recipe itself, not an approximation of it (pekd.data.views, TrainRecipe(exact=True)).

View k of an image is (row offset dy, column offset dx, flip) in mixed radix, k = (dy * nx + dx) * 2 + flip, with
dy < ny and dx < nx the offsets of the crop's corner in the zero-padded image; flip-only and none number the flip
alone (k = flip, k = 0). These are pure functions of arrays, shared by the online draw (`view_numbers`) and a
bank's replay of view k (`view_offsets`), so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np

FINITE = ("cifar", "flip", "none")  # the augmentations whose views can all be stored


def offset_counts(heights: np.ndarray, widths: np.ndarray, size: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(ny, nx): how many row and column offsets a size x size crop has in each zero-padded image (at least 1)."""
    return np.maximum(heights + 2 * pad - size + 1, 1), np.maximum(widths + 2 * pad - size + 1, 1)


def space_size(augment: str, height: int, width: int, size: int, pad: int) -> int | None:
    """How many distinct views an height x width image has under `augment` (None: a continuous space)."""
    if augment == "cifar":
        ny, nx = offset_counts(np.array([height]), np.array([width]), size, pad)
        return int(ny[0] * nx[0] * 2)
    return {"flip": 2, "none": 1}.get(augment)


def describe(augment: str, height: int, width: int, size: int, pad: int) -> str:
    """'162 = 9 x 9 crop offsets x 2 flips', in the words of the augmentation; for start lines and docs."""
    k = space_size(augment, height, width, size, pad)
    if augment == "cifar":
        ny, nx = offset_counts(np.array([height]), np.array([width]), size, pad)
        return f"{k} = {ny[0]} x {nx[0]} crop offsets x 2 flips"
    return {"flip": "2 = the image and its mirror", "none": "1: the center crop, unflipped"}[augment]


def view_numbers(augment: str, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray, nx: np.ndarray) -> np.ndarray:
    """The number k of each drawn view (offsets in the padded image, flip): the row an exact bank stores it at."""
    if augment == "cifar":
        return (dy * nx + dx) * 2 + flip.astype(np.int64)
    if augment == "flip":
        return flip.astype(np.int64)
    return np.zeros_like(dy)


def view_offsets(augment: str, k: np.ndarray, nx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of view_numbers: (dy, dx, flip) of view k (offsets 0 where the augmentation has no crop)."""
    k = np.asarray(k, dtype=np.int64)
    if augment == "cifar":
        cell = k // 2
        return cell // nx, cell % nx, k % 2 == 1
    zero = np.zeros_like(k)
    return zero, zero, (k % 2 == 1) if augment == "flip" else np.zeros(k.shape, dtype=bool)
