"""Fashion-MNIST without root: from data.root, PEKD_FASHION_MNIST or `pekd.demo --data-root`, in Debian's layout
(four idx .gz files) or torchvision's download layout (<root>/FashionMNIST/raw, gzipped and unpacked files)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pekd.data.sources import FASHION_MNIST_DEBIAN, FASHION_MNIST_FILES, fashion_mnist
from pekd.errors import PekdError
from pekd.train import compose_config


def _torchvision_layout(root: Path, gzipped: bool) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_MNIST_FILES:
        src = FASHION_MNIST_DEBIAN / f"{name}.gz"
        if gzipped:
            shutil.copy(src, raw / f"{name}.gz")
        else:
            (raw / name).write_bytes(gzip.decompress(src.read_bytes()))
    return root


@pytest.mark.parametrize("gzipped", [True, False])
def test_torchvision_download_root_reads_as_the_debian_files(tmp_path: Path, gzipped: bool) -> None:
    reference = fashion_mnist(str(FASHION_MNIST_DEBIAN), "val")
    source = fashion_mnist(str(_torchvision_layout(tmp_path, gzipped)), "val")
    assert np.array_equal(source.labels, reference.labels) and np.array_equal(source.arrays, reference.arrays)


def test_the_env_variable_and_the_demo_flag_point_the_config_at_the_data(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pekd.demo import parse_args

    root = _torchvision_layout(tmp_path / "fm", gzipped=True)
    monkeypatch.setenv("PEKD_FASHION_MNIST", str(root))
    assert compose_config(["data=fashion_mnist", "model=resnet8", "method=ce", "teacher=none"]).data.root == str(root)
    monkeypatch.delenv("PEKD_FASHION_MNIST")
    parse_args(["--data-root", str(root)])
    assert os.environ["PEKD_FASHION_MNIST"] == str(root.resolve())
    with pytest.raises(PekdError, match="FashionMNIST/raw"):
        fashion_mnist(str(tmp_path / "empty"), "train")
