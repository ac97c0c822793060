"""results.json: a run's status, accuracies, seeds, data identities and per-epoch history, for pekd.report and
pekd status; and the line that tells a user what a finished run achieved."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pekd.engine.lease import Lease
from pekd.engine.progress import Progress, duration_text
from pekd.engine.rundir import write_json


def run_results(cfg: Any, p: Progress, status: str, world: int,
                data_sets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The results record of a run standing at `p`: best and last are over the epochs evaluated so far."""
    evals = [h for h in p.history if "top1" in h]
    last = evals[-1] if evals else {}
    best = max(evals, key=lambda h: h["top1"]) if evals else {}
    return {"status": status, "name": cfg.name, "method": cfg.method.name, "q": cfg.method.q,
            "beta": cfg.method.beta, "student": cfg.model.name, "teacher": cfg.teacher.name,
            "seed": cfg.seed, "seeds": {"train": cfg.seed, "split": cfg.data.split_seed, "bank": cfg.bank.seed},
            "train_set": data_sets.get("train"), "eval_set": data_sets.get("eval"),
            "epochs": cfg.trainer.epochs, "epoch": p.epoch, "global_step": p.global_step,
            "best_top1": best.get("top1", math.nan), "best_top5": best.get("top5", math.nan),
            "last_top1": last.get("top1", math.nan), "last_top5": last.get("top5", math.nan),
            "paper_top1": cfg.paper_top1 or None, "world_size": world, "history": p.history,
            **_ema_results(evals)}


def _ema_results(evals: list[dict[str, float]]) -> dict[str, float]:
    """The EMA's best and last accuracy (trainer.ema_decay > 0); nothing for runs without one."""
    ema = [h for h in evals if "ema_top1" in h]
    if not ema:
        return {}
    best = max(ema, key=lambda h: h["ema_top1"])
    return {"best_ema_top1": best["ema_top1"], "best_ema_top5": best["ema_top5"],
            "last_ema_top1": ema[-1]["ema_top1"], "last_ema_top5": ema[-1]["ema_top5"]}


def write_results(run_dir: Path, results: dict[str, Any], lease: Lease | None = None) -> None:
    """Stamped with the lease's generation and written only while this process still holds it."""
    if lease is None:
        write_json(run_dir / "results.json", results)
    else:
        write_json(run_dir / "results.json", lease.stamp(results), lambda: lease.check("results.json"))


def recorded(run_dir: Path, status: str, global_step: int, exports: list[str]) -> bool:
    """Whether results.json (and the named exports) already say what the run is: a process stopped between its last
    checkpoint and those files leaves them behind, or a user deleted one; a rerun then writes them again."""
    try:
        old = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(old, dict) and old.get("status") == status and old.get("global_step") == global_step
            and all((run_dir / name).is_file() for name in exports))


def summary_line(r: dict[str, Any], tc: Any, run_dir: Path) -> str:
    """`complete: 240 epochs, global step N: best top-1 x%, last top-1 y%; <results.json>` (or stopped at max_steps)."""
    if r["status"] == "completed":
        head = f"complete: {tc.epochs} epochs, global step {r['global_step']}"
    else:
        head = f"stopped at trainer.max_steps={tc.max_steps} (global step {r['global_step']})"
    best, last = r["best_top1"], r["last_top1"]
    accuracy = "no evaluation yet" if best != best else f"best top-1 {best:.2f}%, last top-1 {last:.2f}%"
    seconds = r["seconds"]
    rate = r["global_step"] * r["global_batch"] / seconds if seconds > 0 else 0.0
    return (f"{head}: {accuracy}; {duration_text(seconds)} of training and evaluation, {rate:.0f} images/s; "
            f"{run_dir / 'results.json'}")

