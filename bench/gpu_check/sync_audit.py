"""`python -m bench.gpu_check.sync_audit`: no device->host sync on the training step, for every AMP and teacher mode.

torch.cuda.set_sync_debug_mode("warn") makes every synchronising CUDA call (an .item(), a .tolist(), a blocking
copy, a GradScaler reading found_inf, ...) raise a warning; the audit catches each one with the Python stack that
made it. Six short PEFD runs train in this process under it: trainer.amp=auto, fp16, bf16, off, bf16 with an
EMA, and bf16 from a feature bank (precomputed first, outside the audit). Only syncs made inside the training loop
(Trainer._steps) after its first WARMUP steps count, less the periodic work it calls (save_checkpoint; the
evaluation at an epoch's end): set-up, warm-up and checkpoint writing may wait for the device. Every run clips
gradients (trainer.grad_clip: clip_grad_norm_ must not read the norm). A run FAILs the audit when, in the loop,

- any sync has a frame in the hot path (HOT_FILES: the step, the prefetch, the bank's reads, the online teacher,
  the EMA, the batch), however rarely; or
- any call site syncs more often than the periodic work allows (once per trainer.sync_every_steps for the
  finiteness/stop agreement, plus one spare): a per-step sync from trainer.py, or from torch code it calls (a
  GradScaler reading found_inf), is caught by its count although its file is not on the hot list.

Every sync is listed with its call site and count in the step's log. A deliberate .item() first proves the audit
sees syncs at all on this torch. Without CUDA the same runs go through the harness on the CPU (nothing can sync
there): NOT CHECKED.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from bench.gpu_check.common import NOT_CHECKED, PASS, has_cuda, overrides, random_teacher, run_step, work_dir

SYNC_MESSAGE = "called a synchronizing CUDA operation"
REPO = Path(__file__).resolve().parents[2]
HOT_FILES = ("pekd/engine/step.py", "pekd/engine/prefetch.py", "pekd/teacher/bank.py", "pekd/teacher/online.py",
             "pekd/engine/ema.py", "pekd/data/batch.py", "pekd/engine/optim.py", "pekd/engine/precision.py")
LOOP = "_steps"  # Trainer._steps: the loop pekd.train runs within an epoch
PERIODIC = ("save_checkpoint", "_end_epoch", "_evaluate_epoch")  # Trainer methods the loop calls now and then
STEPS, SYNC_EVERY = 30, 10
MAX_PER_SITE = STEPS // SYNC_EVERY + 1  # the periodic agreement, plus one spare
WARMUP = 2  # steps 0 and 1 allocate, autotune cuDNN and fill the prefetch: their syncs are listed, not judged


def _loop_step() -> int:
    """The global step of the Trainer._steps frame on the current stack (the sync is made during that step)."""
    frame = sys._getframe()
    while frame is not None and frame.f_code.co_name != LOOP:
        frame = frame.f_back
    trainer = frame.f_locals.get("self") if frame is not None else None
    return int(trainer.progress.global_step) if trainer is not None else WARMUP


def _where(frame: traceback.FrameSummary) -> str:
    path = Path(frame.filename)
    name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else "/".join(path.parts[-2:])
    return f"{name}:{frame.lineno} {frame.name}"


class SyncAudit:
    """Collects every synchronising CUDA call made while it is active, with its call site."""

    def __init__(self) -> None:
        self.sites: Counter[str] = Counter()  # every sync, for the log
        self.loop: Counter[str] = Counter()  # those the training loop made itself
        self.hot: Counter[str] = Counter()  # those of the loop with a hot-path frame
        self.warmup: Counter[str] = Counter()  # the loop's during its first WARMUP steps (reported, not judged)

    def _show(self, message: Any, category: Any, filename: str, lineno: int, file: Any = None,
              line: Any = None) -> None:
        if SYNC_MESSAGE not in str(message):
            self._previous(message, category, filename, lineno, file, line)
            return
        stack = [f for f in traceback.extract_stack()[:-1] if f.filename != warnings.__file__]
        ours = [f for f in stack if Path(f.filename).is_relative_to(REPO)]
        site = _where(ours[-1] if ours else stack[-1])
        callee = _where(stack[-1])
        key = site if callee == site else f"{site} -> {callee}"
        self.sites[key] += 1
        names = {f.name for f in ours}
        if LOOP not in names or names.intersection(PERIODIC):
            return
        if _loop_step() < WARMUP:
            self.warmup[key] += 1
            return
        self.loop[key] += 1
        hot = [f for f in ours if any(f.filename.endswith(h) for h in HOT_FILES)]
        if hot:
            self.hot[f"{_where(hot[-1])} -> {callee}"] += 1

    def __enter__(self) -> SyncAudit:
        self._filters = warnings.catch_warnings()
        self._filters.__enter__()
        warnings.filterwarnings("always", message=SYNC_MESSAGE)
        self._previous = warnings.showwarning
        warnings.showwarning = self._show
        if has_cuda():
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        if has_cuda():
            torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = self._previous
        self._filters.__exit__(*exc)

    def verdict(self) -> list[str]:
        problems = [f"hot path: {k} (x{n})" for k, n in self.hot.items()]
        problems += [f"per-step: {k} (x{n} in {STEPS} steps)" for k, n in self.loop.items() if n > MAX_PER_SITE]
        return problems


def _control(device: torch.device) -> None:
    """A sync the audit must see: a host read of a device tensor."""
    torch.ones(1, device=device).item()


def _train(args: list[str]) -> None:
    from pekd.train import compose_config, run

    run(compose_config(args))


def main() -> tuple[str, str, dict[str, Any]]:
    from pekd.engine.trainer import Trainer

    missing = [name for name in (LOOP, *PERIODIC) if not hasattr(Trainer, name)]
    assert not missing, f"Trainer has no {missing}: the audit's notion of the training loop is out of date"
    cuda = has_cuda()
    work = work_dir("sync_audit")
    teacher = random_teacher(work)
    common = ["method=pefd", "teacher.name=resnet8", f"teacher.weights={teacher}", "data.batch_size=32",
              f"trainer.max_steps={STEPS if cuda else 5}", f"trainer.sync_every_steps={SYNC_EVERY}",
              "trainer.log_every_steps=1000", f"data.workers={2 if cuda else 0}", "trainer.grad_clip=1.0",
              "on_existing=overwrite"]
    bank = work / "bank"
    configs = {"amp auto": ["trainer.amp=auto"]}
    if cuda:
        configs.update({"fp16": ["trainer.amp=fp16"], "bf16": ["trainer.amp=bf16"], "fp32": ["trainer.amp=off"],
                        "bf16 + EMA": ["trainer.amp=bf16", "trainer.ema_decay=0.999"],
                        "bank bf16": ["trainer.amp=bf16", "teacher.mode=bank", f"teacher.bank={bank}"]})
        from pekd.teacher.precompute import precompute
        from pekd.train import compose_config

        precompute(compose_config(overrides(*common, "trainer.amp=bf16", f"teacher.bank={bank}",
                                            f"run_dir={work / 'precompute'}")))
        with SyncAudit() as control:
            _control(torch.device("cuda"))
        assert sum(control.sites.values()) >= 1, "the audit saw no sync from a deliberate .item(): it sees nothing"
    failures, report = {}, {}
    for name, extra in configs.items():
        with SyncAudit() as audit:
            _train(overrides(*common, *extra, f"run_dir={work / name.replace(' ', '_').replace('+', '')}"))
        report[name] = {"loop": dict(audit.loop), "warmup": dict(audit.warmup), "all": dict(audit.sites)}
        print(f"  {name}: {sum(audit.loop.values())} syncs in the training loop: {dict(audit.loop.most_common())}; "
              f"warm-up {dict(audit.warmup)}; {sum(audit.sites.values())} in all: {dict(audit.sites.most_common())}",
              flush=True)
        if audit.verdict():
            failures[name] = audit.verdict()
    details = {"syncs": report, "failures": failures, "hot_files": HOT_FILES, "max_per_site": MAX_PER_SITE}
    if failures:
        first = next(iter(failures.items()))
        raise AssertionError(f"{len(failures)} of {len(configs)} runs sync on the hot path: {first[0]}: "
                             f"{'; '.join(first[1][:3])}")
    if not cuda:
        return NOT_CHECKED, "no CUDA device: the audit's runs went through on the CPU (nothing syncs there)", details
    counts = ", ".join(f"{k} {sum(v['loop'].values())}" for k, v in report.items())
    return PASS, (f"{len(configs)} runs x {STEPS} steps: no sync from the step, prefetch, bank or EMA, none per "
                  f"step; the loop's periodic syncs per run: {counts}"), details


if __name__ == "__main__":
    run_step("sync_audit", main)
