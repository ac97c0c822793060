"""One driver per folder of runs: a second `pekd.demo` or `pekd.study` on the same --out is refused at its start.

Each run of a driver has its own lease (pekd.engine.lease), so two drivers on one folder -- the same command
typed in two terminals, or rerun while the first still works -- never write one run twice. But the second one
would only find that out at the first run the other holds and stop there with that run's error, after planning,
printing and perhaps training the runs the first had not reached yet, which the first then finds taken. The
driver holds the folder's own lease (folder/lease/<generation>.json, the same link()-based record with a
heartbeat; pekd.report finds runs by their config.yaml and passes it by) from its start until it exits, so the
second is refused before it writes anything else, with one line naming the first. A driver that is gone (killed,
its host down) leaves a lease that goes stale as a run's does, and the next one takes it over.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pekd.engine.lease import Holder, Lease
from pekd.errors import PekdError

STALE_S = 60.0  # as trainer.lease_stale_s: the heartbeat runs every 10 s


@contextmanager
def one_driver(folder: Path, command: str) -> Iterator[None]:
    """Hold folder's lease while the block runs; `command` names the driver for the refusal's line."""
    def busy(folder: Path, holder: Holder) -> PekdError:
        return PekdError(f"{str(folder)!r} is in use by another {command}: {holder.describe()} (heartbeat "
                         f"{time.time() - holder.heartbeat:.0f} s ago); wait for it to end and rerun this command "
                         "(finished runs are skipped), stop that one (kill -TERM: its runs checkpoint) and rerun "
                         "this, or give this one another --out")

    if folder.exists() and not folder.is_dir():
        raise PekdError(f"--out {str(folder)!r} is a file; give {command} a folder (a new one, or the --out of its "
                        "earlier run to resume it)")
    lease = Lease.acquire(folder, STALE_S, busy=busy)
    lease.start_heartbeat()
    try:
        yield
    finally:
        lease.release()
