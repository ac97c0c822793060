"""One exception type for mistakes a user can fix.

Entry points catch it, print its one-line message without a traceback and exit non-zero; anything else is a bug
and keeps its traceback -- except Ctrl-C, which is the user's choice, not a bug: one line and exit 130 (training
itself treats Ctrl-C as a stop with a checkpoint, pekd.engine.preemption; what reaches here is an interrupt of
anything else, whose finished files are whole because every writer is atomic).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
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
        except Exception as e:
            if not _raised_by_ctrl_c(e):
                raise
            _interrupted()
        except KeyboardInterrupt:
            _interrupted()
        finally:
            _quiet_interrupts_at_exit()

    return wrapper


def _interrupted() -> None:
    print("interrupted (Ctrl-C): files already written are whole; run the same command again to go on",
          file=sys.stderr, flush=True)
    sys.exit(130)


def _raised_by_ctrl_c(e: BaseException) -> bool:
    """Whether `e` was raised while a Ctrl-C was being handled: a library's cleanup can fail on the state the
    interrupt left and replace the KeyboardInterrupt (the fault soak found OmegaConf's flag_override raising a
    ConfigKeyError from a half-built config, a traceback and exit 1 for a Ctrl-C while the config was composed)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


_AT_EXIT = (b"pekd: Ctrl-C while the process exits: its work is done and written; it goes on exiting (press again "
            b"to end it at once)\n")


_AT_THREAD_SHUTDOWN = False


def _quiet_interrupts_at_exit() -> None:
    """Once the command's work is over, a Ctrl-C landing in the interpreter's exit handlers (logging's flush,
    multiprocessing's reaper, torch's) raised KeyboardInterrupt inside one of them: Python printed "Exception
    ignored in atexit callback" with a traceback and went on exiting. Registered last, this exit handler runs first
    and makes such a Ctrl-C one line; the exit goes on with the command's own status (3 still means resume), and a
    second Ctrl-C ends the process at once (130), as during training. Only at the process's exit: a caller that
    runs the command in-process keeps its own Ctrl-C handling until then."""
    atexit.unregister(_install_exit_handler)  # once, and after whatever the command registered
    atexit.register(_install_exit_handler)
    global _AT_THREAD_SHUTDOWN
    if not _AT_THREAD_SHUTDOWN:  # the interpreter joins non-daemon threads before any atexit handler runs, and a
        # Ctrl-C there printed "Exception ignored in: <module 'threading'>" with a traceback (found looking into the
        # fault soak's exit -2 reports); threading's own exit hooks run first, the last registered first
        threading._register_atexit(_install_exit_handler)  # type: ignore[attr-defined]
        _AT_THREAD_SHUTDOWN = True


_PRESSES = [0]  # Ctrl-Cs during the exit, over both installs (threads' shutdown, then the exit handlers)


def _at_exit_ctrl_c(signum: int, frame: object) -> None:
    _PRESSES[0] += 1
    if _PRESSES[0] >= 2:
        os._exit(130)
    os.write(2, _AT_EXIT)


def _install_exit_handler() -> None:
    try:
        signal.signal(signal.SIGINT, _at_exit_ctrl_c)
    except ValueError:  # not the main thread: leave the interpreter's handling
        pass
