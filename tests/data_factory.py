"""Real datasets made on the fly for tests: JPEG ImageFolder trees and CIFAR-100-format pickle folders.

Images are smooth random fields (upsampled noise), so JPEG sizes and decoder behaviour resemble photos rather
than flat colour. Every helper is deterministic in its seed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 H x W x 3 image: bilinear-upsampled coarse noise plus a little fine noise."""
    coarse = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.int16)
    img = img + rng.integers(-12, 13, size=img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, split: str = "train", classes: int = 3, per_class: int = 10, seed: int = 0,
                      sizes: tuple[tuple[int, int], tuple[int, int]] = ((48, 160), (48, 160)),
                      special_every: int = 7, quality: int = 90) -> list[Path]:
    """Write root/<split>/class_<c>/img_<i>.jpg with varied sizes; return the paths in ImageFolder order.

    sizes: (min, max) of height and of width. Every `special_every`-th image is saved grayscale ("L") and the
    one after it CMYK, because both are common in ImageNet and decoders treat them differently.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for c in range(classes):
        folder = root / split / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h = int(rng.integers(sizes[0][0], sizes[0][1] + 1))
            w = int(rng.integers(sizes[1][0], sizes[1][1] + 1))
            img = Image.fromarray(smooth_image(rng, h, w))
            k = c * per_class + i
            if special_every and k % special_every == 1:
                img = img.convert("L")
            elif special_every and k % special_every == 2:
                img = img.convert("CMYK")
            path = folder / f"img_{i:05d}.jpg"
            img.save(path, quality=quality)
            paths.append(path)
    return paths


def corrupt_jpeg(path: Path) -> None:
    """Replace a file with bytes no decoder accepts (a JPEG start marker followed by garbage)."""
    garbage = np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes()
    path.write_bytes(b"\xff\xd8\xff\xe0" + garbage)


def break_huffman_table(path: Path) -> None:
    """Keep a JPEG's header readable (PIL still reports its size) but make its Huffman table invalid, so
    every decoder fails only when it decodes the pixels."""
    data = bytearray(path.read_bytes())
    k = data.index(b"\xff\xc4")  # DHT marker; then length (2), class/id (1), 16 code counts
    data[k + 5:k + 21] = bytes([255] * 16)
    path.write_bytes(bytes(data))


def make_cifar_folder(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> Path:
    """Write root/cifar-100-python/{train,test,meta} in the official pickle layout; return root."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        images = np.stack([smooth_image(rng, 32, 32) for _ in range(n)])
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)
        labels = rng.integers(0, 100, size=n).tolist()
        with (base / name).open("wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [x // 5 for x in labels]}, f)
    with (base / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)]}, f)
    return root


def small_imagenet(root: Path) -> Path:
    """root/{train,val}: 48 / 12 JPEGs of 48-160 px in 3 classes (some grayscale, some CMYK), and a raw FFCV
    .beton of each split (root/train.beton, root/val.beton)."""
    from pekd.data.sources import build_source
    from pekd.write_dataset import write_beton

    make_image_folder(root, "train", classes=3, per_class=16)
    make_image_folder(root, "val", classes=3, per_class=4, seed=1)
    for split in ("train", "val"):
        write_beton(build_source("imagefolder", str(root), split), root / f"{split}.beton", workers=2)
    return root
