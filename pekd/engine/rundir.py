"""The self-describing run directory: the unit that jobs resume from and sweeps aggregate.

run_dir/
  config.yaml     resolved config (what this directory was made for)
  meta.json       code revision, versions, host, command line
  results.json    status, best/last accuracy, per-epoch history
  checkpoints/    ckpt-<global step>.pt (last k), verified on load
  student.pt      the exported student (no projectors), best.pt at the best eval accuracy
  tb/             TensorBoard events        logs/rank<r>.log   every rank's log
  lease/          <generation>.json: who owns the run now (pekd.engine.lease)
  tracker.json    the W&B run id, wandb/ its offline folders (tracker.name=wandb, pekd.engine.tracker)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pekd.config import as_current
from pekd.engine.files import atomic_write_bytes, write_json
from pekd.engine.lease import FOLDER as LEASE_FOLDER
from pekd.engine.lease import Lease, live_holder
from pekd.errors import PekdError

SUBFOLDERS = ("checkpoints", "tb", "logs")  # made by prepare; resumed runs need them to be folders

# Keys that may differ between a run and its resumption: they change how, not what, is trained.
RESUMABLE_CHANGES = {"on_existing", "trainer.progress", "data.workers", "data.max_micro_batch",
                     "trainer.log_every_steps", "trainer.max_steps", "trainer.ckpt_every_steps", "trainer.keep_last",
                     "data.eval_batch_size", "data.os_cache", "run_dir", "trainer.audit_samples",
                     "trainer.threads", "trainer.dist_timeout_s", "trainer.compile", "trainer.sync_every_steps",
                     "trainer.analyze",
                     "trainer.lease_stale_s", "trainer.lease_wait_s",
                     # what a bank built from this config holds beside the features; training reads the same rows
                     "bank.logits",
                     # a label from the literature shown beside the run's result, not part of what is trained
                     "paper_top1",
                     # where the scalars are also sent, not what is trained: a run may start logging on resume
                     "tracker.name", "tracker.project", "tracker.entity", "tracker.mode", "tracker.dir"}


@cache
def schema_defaults() -> dict[str, Any]:
    """Every key's default in the schema (pekd.config), flattened. A key a newer pekd adds, at its default, is not
    a change: the run it names is the run an older config.yaml without the key described."""
    from pekd.config import Config

    tree = OmegaConf.to_container(OmegaConf.structured(Config))
    assert isinstance(tree, dict)
    return flatten(tree)


def _experiment(tree: dict[str, Any]) -> dict[str, Any]:
    """The keys that make the experiment, in this pekd's terms (pekd.config.as_current): no resumable keys, no keys at
    their schema default."""
    defaults = schema_defaults()
    return {k: v for k, v in as_current(flatten(tree)).items()
            if k not in RESUMABLE_CHANGES and not (k in defaults and defaults[k] == v)}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: configs compared and tabulated key by key."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_hash(cfg: DictConfig | dict[str, Any]) -> str:
    """8 hex digits of what the run trains (the resolved config without the keys a resume may change): equal
    for the same command typed again, different for any change that makes another run."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    assert isinstance(tree, dict)
    return hashlib.sha256(json.dumps(_experiment(tree), sort_keys=True, default=str).encode()).hexdigest()[:8]


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Experiment keys whose values differ (a key only one side has counts as its schema default)."""
    a, b = _experiment(old), _experiment(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def prepare(run_dir: Path, cfg: DictConfig) -> tuple[bool, Lease]:
    """Create or adopt run_dir for cfg (rank 0 only) and take its lease (pekd.engine.lease, heartbeat running);
    the bool is True when run_dir holds an earlier run of the same config.

    A non-empty directory made for a different config is refused (on_existing=overwrite moves it aside to
    run_dir.old-<time>, never deleting it). A run_dir that cannot be a writable folder is refused before anything
    is written, so a bad path never leaves a half-made run behind; so is one whose config.yaml cannot be read.
    Everything that can be refused by reading is refused before the lease is taken: a refused command leaves a
    finished run untouched. A run directory whose lease is live is refused naming its owner, and is never moved
    aside by on_existing=overwrite.
    """
    _check_usable(run_dir)
    cfg_file = run_dir / "config.yaml"
    new = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(new, dict)
    try:
        existing = run_dir.is_dir() and any(p.name != LEASE_FOLDER for p in run_dir.iterdir())
        if existing and cfg.on_existing == "fail":
            raise PekdError(f"run directory {str(run_dir)!r} is not empty and on_existing=fail; choose another "
                            "run_dir, or on_existing=resume / on_existing=overwrite")
        # A live owner may be between making the folders and writing config.yaml (two identical commands at
        # once): the lease, not the missing file, is the answer then, and the check waits until it is held.
        being_made = existing and not cfg_file.is_file() and live_holder(run_dir) is not None
        if existing and cfg.on_existing == "resume" and not being_made:
            _check_same_config(run_dir, new)
            _check_subfolders(run_dir)
        lease = Lease.acquire(run_dir, cfg.trainer.lease_stale_s, cfg.trainer.lease_wait_s)
        lease.start_heartbeat()
        try:
            if being_made and cfg.on_existing == "resume":  # its maker finished, or died, while this one waited
                _check_same_config(run_dir, new)
            if existing and cfg.on_existing == "overwrite":
                aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
                run_dir.rename(aside)
                lease.run_dir = aside
                lease.release()  # the moved run's lease, marked released there
                lease = Lease.acquire(run_dir, cfg.trainer.lease_stale_s, 0, lease.generation + 1)
                lease.start_heartbeat()
                existing = False
            for sub in SUBFOLDERS:
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
            for debris in (run_dir / "checkpoints").glob(".*.tmp-*"):  # a killed writer's; this process owns the run
                debris.unlink(missing_ok=True)
            atomic_write_bytes(cfg_file, OmegaConf.to_yaml(new).encode(), lambda: lease.check("config.yaml"))
            write_json(run_dir / "meta.json", describe_environment(), lambda: lease.check("meta.json"))
        except BaseException:
            lease.release()
            raise
    except OSError as e:  # what the checks cannot foresee: /proc, a read-only mount, a full disk
        where = f": {e.filename!r}" if e.filename else ""
        raise PekdError(f"run_dir={str(run_dir)!r} cannot be made or written ({e.strerror or e}{where}); choose a "
                        "run_dir in a folder you can write to") from None
    return bool(existing), lease


def read_run_config(cfg_file: Path, fix: str) -> dict[str, Any]:
    """A run's config.yaml as a plain mapping (unresolved), or one error line naming the damaged file and `fix`:
    every reader of run directories (resume, submit, report, analyze) says the same thing about a damaged one."""
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as e:
        why = " ".join(str(e).split())[:200]
        raise PekdError(f"{str(cfg_file)!r} cannot be read ({type(e).__name__}: {why}); {fix}") from None
    if not isinstance(cfg, dict):
        raise PekdError(f"{str(cfg_file)!r} is not a pekd config (a YAML {type(cfg).__name__}, not a mapping); {fix}")
    return cfg


def _check_same_config(run_dir: Path, new: dict[str, Any]) -> None:
    """Refuse resuming a run directory that is not a pekd run, whose config.yaml cannot be read, or that was made
    for another config (reads only)."""
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise PekdError(f"run directory {str(run_dir)!r} is not empty and has no config.yaml (not a pekd "
                        "run); choose another run_dir or on_existing=overwrite (moves it aside)")
    old = read_run_config(cfg_file, "restore it, or run with on_existing=overwrite to move the old run aside and "
                                    "start afresh")
    diff = config_differences(old, new)
    if diff:
        shown = ", ".join(f"{k}: {flatten(old).get(k)!r} -> {flatten(new).get(k)!r}" for k in diff[:3])
        raise PekdError(f"run directory {str(run_dir)!r} holds a run of a different config ({shown}"
                        f"{' ...' if len(diff) > 3 else ''}); use another run_dir, or "
                        "on_existing=overwrite to move the old run aside")


def _check_subfolders(run_dir: Path) -> None:
    """A run resumed in place needs its folders to be folders: a file in one's place (a copy gone wrong, a stray
    redirect) is named, rather than reported as a run_dir that cannot be written."""
    for sub in SUBFOLDERS:
        path = run_dir / sub
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise PekdError(f"{str(path)!r} is a file where the run keeps its {sub} folder; move that file aside and "
                            "rerun, or run with on_existing=overwrite to move the old run aside and start afresh")


def _check_usable(run_dir: Path) -> None:
    """Refuse a run_dir that is a file, lies under a file, or sits in a folder this process cannot write.

    Checked before prepare touches anything: failing halfway through would leave a partial run directory (or,
    for on_existing=overwrite, an old run moved aside for nothing).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise PekdError(f"run_dir={str(run_dir)!r} is a file, not a folder; choose another run_dir")
    folder = run_dir
    while not folder.exists() and folder != folder.parent:  # exists() is False under a file, too
        folder = folder.parent
    if not folder.is_dir():
        raise PekdError(f"run_dir={str(run_dir)!r} lies under {str(folder)!r}, which is a file, not a folder; "
                        "choose another run_dir")
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        raise PekdError(f"run_dir={str(run_dir)!r}: {str(folder)!r} is on a read-only filesystem; remount it "
                        "writable or choose a run_dir on a writable filesystem")
    if not os.access(folder, os.W_OK | os.X_OK | os.R_OK):
        raise PekdError(f"run_dir={str(run_dir)!r}: no permission to write in {str(folder)!r}; choose a run_dir "
                        "in a folder you can write to")


def git_revision() -> str:
    """The commit pekd runs from ('<sha>+dirty' with uncommitted changes; 'unknown' outside a checkout): the
    version number alone cannot say which code made a run, an export or a bank."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def describe_environment() -> dict[str, Any]:
    from importlib.metadata import version

    import torch

    import pekd

    return {"pekd": pekd.__version__, "git": git_revision(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": version("torchvision"),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "host": socket.gethostname(),
            "argv": sys.argv, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
