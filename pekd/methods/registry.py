"""Name -> method class, the one place `method.name` is resolved (as pekd.models.registry resolves model names).

Each method file registers its class with `@register("name")`; pekd/methods/__init__.py imports every method file,
so importing pekd.methods fills the table. The table lives here rather than in base.py so that base.py never
imports the method files that import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pekd.errors import PekdError
from pekd.methods.base import Method

M = TypeVar("M", bound=type[Method])

_METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[M], M]:
    """Class decorator: `method.name=<name>` builds this class through its `from_config`."""

    def add(cls: M) -> M:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        _METHODS[name] = cls
        return cls

    return add


def method_names() -> tuple[str, ...]:
    """Registered names, in registration order."""
    return tuple(_METHODS)


def build_method(cfg: Any, d_s: int, d_t: int | None, num_classes: int | None = None) -> Method:
    """Build the configured method; d_t is the teacher's feature dimension (None without a teacher), num_classes
    the student's output size (what a logit projector maps)."""
    if cfg.name not in _METHODS:
        raise PekdError(f"unknown method.name={cfg.name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[cfg.name].from_config(cfg, d_s, d_t, num_classes)
