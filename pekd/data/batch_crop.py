"""The crops and flips of a whole batch as one gather, for views that need no resize.

A box of the output's size (CIFAR's pad-4 crop; the center crop of an image stored at the training size) needs no
resampling: each output pixel is one source pixel, or zero where the box reaches outside the image. So a batch is
one index computation and one gather from a zero-padded copy of the images, on whichever device they are, instead
of a crop, a pad and a flip call per image. The pixels are byte for byte what `pekd.data.torch_pipeline.apply_view`
makes of the same views, which lets the torch pipeline crop per batch and the device pipeline keep whole data sets
on the GPU.

Images are uint8 NHWC, the layout the sources hold them in; the result is [B, C, size, size] with channels_last
strides (a permuted view of the NHWC gather), the layout the trainer runs in, so no layout copy follows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf

from pekd.data.views import Views


def reach(views: Views, height: int, width: int) -> int:
    """How many pixels the boxes reach outside a height x width image: the zero padding the gather needs."""
    if len(views) == 0:
        return 0
    return int(max(0, -views.top.min(), -views.left.min(), (views.top + views.height).max() - height,
                   (views.left + views.width).max() - width))


def pad_images(images: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 NHWC images with `pad` zero pixels around each (a copy; the images themselves when pad is 0)."""
    return nnf.pad(images, (0, 0, pad, pad, pad, pad)) if pad else images


def gather_crops(padded: torch.Tensor, pad: int, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                 flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of padded[index[j]] at box (top[j], left[j], size, size) of the unpadded image, mirrored where flip[j].

    padded: uint8 [N, H + 2 pad, W + 2 pad, C], the images padded by `pad` >= reach(views); index, top, left:
    int64 [B] and flip: bool [B], on padded's device. Returns uint8 [B, C, size, size], channels_last strides.

    One flat index_select: row r, column c of output j is pixel (index[j], top[j] + pad + r, left[j] + pad + c'),
    c' = c or size - 1 - c when flipped. (Faster on a CPU than indexing with three broadcast index tensors, and one
    kernel on a GPU.)
    """
    n, hp, wp, c = padded.shape
    steps = torch.arange(size, device=padded.device)
    rows = (index * hp + top + pad)[:, None] + steps  # [B, size]: row numbers in the [N * Hp] stack
    start = (left + pad)[:, None]
    cols = torch.where(flip[:, None], start + (size - 1 - steps), start + steps)  # [B, size]
    pixels = (rows[:, :, None] * wp + cols[:, None, :]).reshape(-1)
    out = padded.reshape(n * hp * wp, c).index_select(0, pixels)
    return out.view(len(index), size, size, c).permute(0, 3, 1, 2)


def crop_arrays(arrays: np.ndarray, index: np.ndarray, views: Views, size: int) -> torch.Tensor:
    """The batch `index` of in-memory uint8 NHWC images cropped to its views on the host: one numpy gather of the
    images, one pad, one gather of the crops (the torch pipeline's per-batch path)."""
    images = torch.from_numpy(arrays[index])
    pad = reach(views, arrays.shape[1], arrays.shape[2])
    local = torch.arange(len(index))
    return gather_crops(pad_images(images, pad), pad, local, torch.from_numpy(views.top),
                        torch.from_numpy(views.left), torch.from_numpy(views.flip), size)
