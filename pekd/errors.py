"""One exception type for mistakes a user can fix.

Entry points catch it, print its one-line message without a traceback and exit non-zero; anything else is a bug
and keeps its traceback -- except Ctrl-C, which is the user's choice, not a bug: one line and exit 130 (training
itself treats Ctrl-C as a stop with a checkpoint, pekd.engine.preemption; what reaches here is an interrupt of
anything else, whose finished files are whole because every writer is atomic).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any


class PekdError(Exception):
    """A user error: the message names the bad value and says how to fix it."""


def user_errors_exit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an entry point so a PekdError becomes `error: <message>` on stderr and exit status 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PekdError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C): files already written are whole; run the same command again to go on",
                  file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper
