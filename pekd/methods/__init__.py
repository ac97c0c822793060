"""Distillation methods: one file each, all returning a dict of named, already-weighted losses.

Importing the method files registers them (pekd.methods.registry); a new method is one new file here plus its
import below.
"""

from pekd.methods import ce, fd, kd, pefd  # noqa: F401 -- each registers its method
from pekd.methods.base import Method, TrainModule
from pekd.methods.registry import build_method, method_names

__all__ = ["Method", "TrainModule", "build_method", "method_names"]
