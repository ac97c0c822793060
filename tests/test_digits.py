"""The digits source reads sklearn's own file without importing scikit-learn (1.5 s a start), and gives exactly
what `sklearn.datasets.load_digits` gives -- also where the file is not where it looks (a scikit-learn that keeps
it elsewhere: load_digits reads it)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pekd.data import sources
from tests.train_helpers import REPO


@pytest.mark.parametrize("where", ["file", "no file"])
def test_digits_are_sklearns_digits(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    if where == "no file":
        monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    images, target = sources._digits_arrays()
    d = load_digits()
    assert images.shape == (1797, 8, 8) and np.array_equal(images, d.images)
    assert np.array_equal(target, d.target)
    train, val = sources.digits("", "train"), sources.digits("", "val")
    assert len(train.labels) + len(val.labels) == 1797 and train.arrays.dtype == np.uint8


def test_a_digits_run_does_not_import_sklearn() -> None:
    code = ("import sys; from pekd.data.sources import digits; s = digits('', 'train'); "
            "print(len(s.labels), 'sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["1437", "False"], done.stdout + done.stderr
