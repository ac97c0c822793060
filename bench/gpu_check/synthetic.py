"""Synthetic CIFAR-100: random images in the shapes pekd.data.sources.cifar100 reads, so the GPU check trains the
paper's CIFAR recipe through pekd.train and its real pipelines on a node without the data set (no downloads).

Images and labels are uniform noise: what the pipelined steps measure (images/s, and the loss of graphed vs eager
steps on the same batches) does not depend on what the images show.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def synthetic_cifar100(folder: Path, train: int = 50_000, test: int = 10_000) -> Path:
    """`folder`/cifar-100-python/{train,test,meta} of random uint8 images (N x 3072, channel-major, as CIFAR's
    pickles are) and fine labels; returns `folder`, the data.root to give pekd.train."""
    base = folder / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        data = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                "fine_labels": rng.integers(0, 100, n).tolist()}
        (base / split).write_bytes(pickle.dumps(data, protocol=4))
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i}" for i in range(100)]}))
    return folder
