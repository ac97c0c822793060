"""Where training stands: the counters and records a checkpoint carries besides the weights."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Progress:
    """Saved in every checkpoint; a resumed run continues from exactly these counters."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps already done in `epoch`
    global_step: int = 0
    best_top1: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)
    # the last finished epoch's history record while its evaluation is still to run (it runs after the checkpoint)
    pending_eval: dict[str, float] | None = None
    lr: float = 0.0  # the lr of the last optimizer step (the schedule steps right after it): logged and recorded
    seconds: float = 0.0  # wall time of training and evaluation up to here, over every start: the run's "time"


def duration_text(seconds: float) -> str:
    """A duration as compact as the ETA column of `pekd status`: 45s, 12m03s, 2h05m."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
