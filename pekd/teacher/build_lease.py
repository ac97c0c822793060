"""One builder per feature bank: the run directory's lease (pekd.engine.lease), taken on the bank folder.

Two precomputes of one bank at once -- the same command twice, a job requeued while its first instance still
runs -- would both compute every chunk and race to seal, the loser failing on a building.json the winner already
removed. The builder's rank 0 holds the folder's lease (bank/lease/<generation>.json, link()-based, with a
heartbeat) from before its first write until it returns; every rank checks it is still current right before it
writes a chunk marker or the manifest. A second builder is refused with one line naming the holder, or waits
for it (trainer.lease_wait_s) and then finds the bank sealed. A sealed bank needs no lease: it is only read.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pekd.engine.lease import Holder, Lease, live_holder
from pekd.errors import PekdError


def busy(folder: Path, holder: Holder) -> PekdError:
    return PekdError(f"feature bank {str(folder)!r} is being built by {holder.describe()} (heartbeat "
                     f"{time.time() - holder.heartbeat:.0f} s ago); wait for that build to end (this command then "
                     "finds the bank sealed and does nothing), stop it, or set trainer.lease_wait_s=<seconds> to "
                     f"wait for it (a build with no heartbeat for its trainer.lease_stale_s={holder.stale_s:g} s is "
                     "taken over)")


def refuse_if_busy(folder: Path, wait_s: float) -> None:
    """Before anything is written: a live builder is one PekdError naming it, or, with a wait asked for, one line
    saying whom this command waits for (it would otherwise sit silent for up to wait_s)."""
    holder = live_holder(folder)
    if holder is None:
        return
    if wait_s <= 0:
        raise busy(folder, holder)
    print(f"feature bank {folder} is being built by {holder.describe()}; waiting up to {wait_s:g} s for it "
          "(trainer.lease_wait_s)", file=sys.stderr, flush=True)


def take(folder: Path, stale_s: float, wait_s: float) -> Lease:
    """Rank 0: take the bank folder's lease (waiting up to wait_s for a live builder) and start its heartbeat."""
    lease = Lease.acquire(folder, stale_s, wait_s, busy=busy)
    lease.start_heartbeat()
    return lease


def shared(lease: Lease) -> dict[str, Any]:
    """What the other ranks need to check the lease: its holder record (generation and token)."""
    return asdict(lease.holder)


def follower(folder: Path, holder: dict[str, Any]) -> Lease:
    """Another rank's view of rank 0's lease: only to `check` it before writing; never renewed or released."""
    return Lease(folder, Holder(**holder))
