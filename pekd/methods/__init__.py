"""Distillation methods: one file each, all returning a dict of named, already-weighted losses."""

from pekd.methods.base import Method, TrainModule, build_method

__all__ = ["Method", "TrainModule", "build_method"]
