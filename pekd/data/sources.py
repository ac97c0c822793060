"""Where the samples come from: CIFAR-100 pickles, ImageFolder trees, Fashion-MNIST, sklearn digits.

A Source is random access to (uint8 HWC image, label) plus an identity that feature banks and .beton files are
checked against. Nothing is ever downloaded: a missing or malformed dataset is a PekdError that says where pekd
looked and what it expected there.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pekd.errors import PekdError

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "PEKD_FASHION_MNIST"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")

# Per-channel mean/std in [0, 255] units; normalisation happens on the device, after uint8 transfer.
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
CIFAR100_MEAN, CIFAR100_STD = (129.3, 124.1, 112.4), (68.2, 65.4, 70.4)
FMNIST_MEAN, FMNIST_STD = (72.9,), (90.0,)
DIGITS_MEAN, DIGITS_STD = (77.0,), (98.0,)


@dataclass
class Source:
    """Random access to a labelled image set.

    Either `arrays` (all images in memory, N x H x W x C uint8) or `paths` (encoded files decoded on demand).
    """

    name: str
    split: str
    labels: np.ndarray
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arrays: np.ndarray | None = None
    paths: list[str] | None = None
    root: str = ""
    classes: list[str] = field(default_factory=list)
    indices: np.ndarray | None = None  # positions in the full split when this is a subset (None: all of it)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int | None:
        """Side of the (square) stored images, or None for variable-size files."""
        return None if self.arrays is None else int(self.arrays.shape[1])

    def image(self, i: int) -> np.ndarray:
        """The i-th image as uint8 H x W x C (C = in_chans)."""
        if self.arrays is not None:
            return self.arrays[i]
        assert self.paths is not None
        return decode_file(self.paths[i], self.in_chans)

    def identity(self) -> dict[str, object]:
        """What makes two sources the same data, for manifests: name, split, size and content hashes."""
        h = hashlib.sha256(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        files = hashlib.sha256("\n".join(self.paths or []).encode())
        ident: dict[str, object] = {"name": self.name, "split": self.split, "n": len(self),
                                    "labels_sha256": h.hexdigest()[:16]}
        if self.paths is not None:
            ident["files_sha256"] = files.hexdigest()[:16]
        if self.indices is not None:  # which samples of the split: equal labels do not make an equal subset
            ident["indices_sha256"] = hashlib.sha256(self.indices.astype(np.int64).tobytes()).hexdigest()[:16]
        return ident

    def subset(self, n: int, split_seed: int) -> Source:
        """The first n samples of a permutation keyed by split_seed: a fixed, class-balanced-in-expectation
        subset that does not move with the training seed (so a seed sweep trains and tests on the same images)."""
        if n <= 0:
            return self
        if n > len(self):
            raise PekdError(f"asked for a subset of {n} samples of {self.name}/{self.split}, which has "
                            f"{len(self)}; lower data.subset / data.val_subset (0 = all)")
        if n == len(self):
            return self
        keep = np.sort(np.random.default_rng(split_seed).permutation(len(self))[:n])
        return Source(self.name, self.split, self.labels[keep], self.num_classes, self.in_chans, self.mean,
                      self.std, None if self.arrays is None else self.arrays[keep],
                      None if self.paths is None else [self.paths[i] for i in keep], self.root, self.classes,
                      keep)


def decode_file(path: str, in_chans: int = 3) -> np.ndarray:
    """Decode an image file to uint8 HWC with torchvision (grayscale and CMYK become RGB)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        img = decode_image(read_file(path), mode=ImageReadMode.RGB if in_chans == 3 else ImageReadMode.GRAY)
    except (RuntimeError, OSError) as e:
        raise PekdError(f"cannot decode image {path!r} ({e}); delete or replace the file") from None
    assert isinstance(img, torch.Tensor)
    return img.permute(1, 2, 0).numpy()


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise PekdError(f"CIFAR-100 file {str(path)!r} not found; data.root must contain the 'cifar-100-python' "
                        "folder of the python version (train, test, meta) from https://www.cs.toronto.edu/~kriz/")
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # any unpickling failure means the file is not what we expect
        raise PekdError(f"CIFAR-100 file {str(path)!r} is corrupt or not a CIFAR pickle ({type(e).__name__}: "
                        f"{e}); re-extract cifar-100-python.tar.gz") from None


def cifar100(root: str, split: str) -> Source:
    """CIFAR-100 from the standard python-pickle folder: root/cifar-100-python/{train,test,meta}."""
    base = Path(root) / "cifar-100-python"
    if not base.is_dir() and (Path(root) / "train").is_file():
        base = Path(root)
    d = _load_pickle(base / ("train" if split == "train" else "test"))
    meta = _load_pickle(base / "meta")
    try:
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(d["fine_labels"], dtype=np.int64)
        classes = list(meta["fine_label_names"])
    except (KeyError, ValueError) as e:
        raise PekdError(f"CIFAR-100 pickle in {str(base)!r} lacks the expected 'data'/'fine_labels' arrays "
                        f"({e}); re-extract cifar-100-python.tar.gz") from None
    if data.shape[0] != labels.shape[0] or labels.min() < 0 or labels.max() >= 100:
        raise PekdError(f"CIFAR-100 pickle in {str(base)!r} has {data.shape[0]} images but {labels.shape[0]} "
                        "labels or labels outside 0..99; re-extract cifar-100-python.tar.gz")
    return Source("cifar100", split, labels, 100, 3, CIFAR100_MEAN, CIFAR100_STD, arrays=np.ascontiguousarray(data),
                  root=str(base), classes=classes)


def image_folder(root: str, split: str) -> Source:
    """An ImageFolder tree (ImageNet's layout): root/<split>/<class>/<image>."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    base = Path(root) / split
    if not base.is_dir():
        raise PekdError(f"image folder {str(base)!r} does not exist; data.root must hold '{split}/<class>/<image>' "
                        "(ImageNet's train/val layout)")
    try:
        classes, class_to_idx = find_classes(str(base))
        samples = make_dataset(str(base), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise PekdError(f"image folder {str(base)!r}: {e}; every class folder needs at least one image") from None
    paths = [p for p, _ in samples]
    labels = np.asarray([c for _, c in samples], dtype=np.int64)
    return Source("imagefolder", split, labels, len(classes), 3, IMAGENET_MEAN, IMAGENET_STD, paths=paths,
                  root=str(base), classes=classes)


def fashion_mnist_dir(root: str) -> Path:
    """The folder holding the four idx files: data.root, else $PEKD_FASHION_MNIST, else Debian's package folder.

    Each may be the files' own folder or a torchvision download root (<root>/FashionMNIST/raw, or <root>/raw),
    where the files lie gzipped and unpacked side by side; either form is read, so no root is needed to install
    the data (torchvision's FashionMNIST(root, download=True) on a machine with network, then copy the folder)."""
    import os

    base = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEBIAN)
    for folder in (base, base / "FashionMNIST" / "raw", base / "raw"):
        if all((folder / f"{n}.gz").is_file() or (folder / n).is_file() for n in FASHION_MNIST_FILES):
            return folder
    raise PekdError(f"no Fashion-MNIST idx files in {str(base)!r} (nor in its FashionMNIST/raw or raw folder); "
                    f"install Debian's dataset-fashion-mnist, or point data.root (or {FASHION_MNIST_ENV}, or "
                    "`pekd.demo --data-root`) at a folder with the four idx files, gzipped or not, e.g. torchvision's "
                    "download root")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    if not path.is_file() and path.with_suffix("").is_file():
        path = path.with_suffix("")  # torchvision's raw folder also holds the unpacked files
    if not path.is_file():
        raise PekdError(f"Fashion-MNIST file {str(path)!r} not found; install Debian's dataset-fashion-mnist "
                        f"(apt-get install dataset-fashion-mnist) or point data.root at the four idx .gz files")
    try:
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as e:
        raise PekdError(f"Fashion-MNIST file {str(path)!r} is not valid gzip ({e}); reinstall the package") from None
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x800 + ndim:
        raise PekdError(f"Fashion-MNIST file {str(path)!r} has idx magic {magic:#x}, expected {0x800 + ndim:#x}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise PekdError(f"Fashion-MNIST file {str(path)!r} is truncated: {arr.size} bytes for shape {dims}")
    return arr.reshape(dims)


def fashion_mnist(root: str, split: str) -> Source:
    """Fashion-MNIST from the idx .gz files that Debian's dataset-fashion-mnist installs."""
    base = fashion_mnist_dir(root)
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(base / f"{prefix}-images-idx3-ubyte.gz", 3)[..., None]
    labels = _read_idx(base / f"{prefix}-labels-idx1-ubyte.gz", 1).astype(np.int64)
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    # a writable copy: the idx bytes are read-only, and torch warns when a loader wraps them
    return Source("fashion_mnist", split, labels, 10, 1, FMNIST_MEAN, FMNIST_STD, arrays=images.copy(),
                  root=str(base), classes=classes)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as (images (n, 8, 8) float 0..16, labels): its own file, read as `load_digits` reads it.

    `sklearn.datasets.load_digits` imports scikit-learn whole first: 1.5 s on a 2-core machine, 15 times the
    0.1 s of the read, paid by every start of a digits run (the tests' SLURM jobs and toy studies start hundreds).
    The file is found without importing sklearn; where a scikit-learn keeps it elsewhere, load_digits reads it."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is None or not csv.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    data = np.loadtxt(csv, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digits(root: str, split: str) -> Source:
    """sklearn's 8x8 digits (ships inside scikit-learn): a deterministic 80/20 split, for fast tests."""
    raw, target = _digits_arrays()
    images = np.clip(raw * 16, 0, 255).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(0.8 * len(images))
    keep = np.sort(order[:cut] if split == "train" else order[cut:])
    return Source("digits", split, target[keep].astype(np.int64), 10, 1, DIGITS_MEAN, DIGITS_STD,
                  arrays=np.ascontiguousarray(images[keep]), root="sklearn", classes=[str(i) for i in range(10)])


SOURCES = {"cifar100": cifar100, "imagefolder": image_folder, "fashion_mnist": fashion_mnist, "digits": digits}


def run_sources(cfg: Any) -> tuple[Source, Source]:
    """A run's (train, eval) sources: the configured data with its subsets, keyed by data.split_seed only."""
    d = cfg.data
    return (build_source(d.source, d.root, "train").subset(d.subset, d.split_seed),
            build_source(d.source, d.root, "val").subset(d.val_subset, d.split_seed))


def build_source(name: str, root: str, split: str) -> Source:
    """Build a source by name; split is 'train' or 'val'."""
    if name not in SOURCES:
        raise PekdError(f"unknown data source {name!r}; choose one of {sorted(SOURCES)}")
    if split not in ("train", "val"):
        raise PekdError(f"unknown split {split!r}; use 'train' or 'val'")
    return SOURCES[name](root, split)
