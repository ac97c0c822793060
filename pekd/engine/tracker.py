"""An optional experiment tracker (Weights & Biases) beside TensorBoard and metrics.csv: the same scalars at the
same global steps, the run's resolved config, the run directory's name.

Offline by default (tracker.mode=offline): compute nodes often have no network, and a tracker waiting for its
server would stall the job. W&B then writes each start of the run into <tracker.dir>/wandb/offline-run-<time>-<id>/
and nothing leaves the node; `wandb sync` uploads the folders later from a login node (docs/clusters.md).

The W&B run id is drawn once and kept in the run directory (tracker.json), so a resumed or requeued run -- on any
node, with any tracker.dir -- continues the same W&B run (resume="allow"; `wandb sync` replays its folders in
order), while on_existing=overwrite, which moves the old run aside, starts a new one. Rank 0 only, like every
other writer of the run directory; the package is an extra (`pip install 'pekd[wandb]'`), checked before any work.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pekd.data.extras import import_extra
from pekd.engine.files import atomic_write_bytes
from pekd.errors import PekdError

log = logging.getLogger("pekd")

ID_FILE = "tracker.json"


def require_tracker(tracker: Any) -> Any:
    """The tracker's package (None for tracker.name=none), or one PekdError naming the extra that installs it."""
    if tracker.name == "none":
        return None
    return import_extra("wandb", "wandb", f"tracker.name={tracker.name}", "tracker.name=none")


def run_id(run_dir: Path) -> str:
    """This run directory's W&B run id: read from tracker.json, or drawn and written there the first time."""
    path = run_dir / ID_FILE
    if path.is_file():
        try:
            return str(json.loads(path.read_text())["wandb_id"])
        except (ValueError, KeyError, TypeError) as e:
            raise PekdError(f"{str(path)!r} cannot be read ({type(e).__name__}: {e}); delete it to start a new "
                            "W&B run for this run directory, or restore it to continue the old one") from None
    new = secrets.token_hex(4)  # W&B's own ids are 8 characters of [0-9a-z] too
    atomic_write_bytes(path, json.dumps({"wandb_id": new}).encode())
    return new


class WandbTracker:
    """One W&B run for one start of a pekd run; `log` is called with exactly what TensorBoard gets."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        wandb = require_tracker(cfg.tracker)
        tc = cfg.tracker
        root = Path(tc.dir) if tc.dir else run_dir
        root.mkdir(parents=True, exist_ok=True)
        rid = run_id(run_dir)
        try:
            # console="off": pekd's own logs (logs/rank0.log) already keep the console, and W&B's capture would
            # wrap the streams pekd tees into them
            self.run = wandb.init(project=tc.project, entity=tc.entity or None, name=run_dir.name, id=rid,
                                  resume="allow", mode=tc.mode, dir=str(root),
                                  config=OmegaConf.to_container(cfg, resolve=True),
                                  settings=wandb.Settings(console="off", quiet=True))
        except wandb.errors.Error as e:
            raise PekdError(f"tracker.name=wandb with tracker.mode={tc.mode} could not start W&B run {rid} ({e}); "
                            "on a node without network use tracker.mode=offline and `wandb sync` later "
                            "(docs/clusters.md), or tracker.name=none") from None
        where = Path(self.run.dir).parent  # <root>/wandb/offline-run-<time>-<id>/files -> the run's folder
        log.info("tracker: W&B run %s (%s, project %s) in %s%s", rid, tc.mode, tc.project, where,
                 f"; upload it from a node with network: wandb sync {where.parent}/offline-run-*-{rid}"
                 if tc.mode == "offline" else "")

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(cfg: Any, run_dir: Path) -> WandbTracker | None:
    """The tracker tracker.name asks for (rank 0 calls this), or None."""
    return None if cfg.tracker.name == "none" else WandbTracker(cfg, run_dir)
