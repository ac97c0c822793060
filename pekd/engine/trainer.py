"""The training loop: DDP over student + projectors, AMP, channels_last, accumulation, step-exact checkpoints.

Everything a resumed run needs is a function of the checkpoint: the data order is a pure function of
(seed, epoch) and the global batch (pekd.data.order), and every step reseeds torch from (seed, rank, global step),
so a run stopped at any step and resumed -- on the same or another number of processes -- continues the same
trajectory (bit for bit on the same world size with deterministic algorithms).

An epoch ends with its checkpoint, then its evaluation (marked pending in that checkpoint): a stop requested
during a long evaluation is acted on within a batch, and the resumed run evaluates first and records the result
as an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.tensorboard import SummaryWriter

from pekd.data.batch import Batch
from pekd.engine import checkpoint as ckpt
from pekd.engine.distributed import DistEnv, all_reduce_max, all_reduce_sum
from pekd.engine.evaluation import Inputs, evaluate
from pekd.engine.preemption import StopSignal
from pekd.engine.rundir import write_json
from pekd.errors import PekdError
from pekd.methods.base import TrainModule

log = logging.getLogger("pekd")


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps already done in `epoch`
    global_step: int = 0
    best_top1: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)
    # the last finished epoch's history record while its evaluation is still to run (it runs after the checkpoint)
    pending_eval: dict[str, float] | None = None


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """auto: fp16 with a GradScaler on CUDA; on CPU bf16 only where oneDNN has native bf16 kernels (AVX-512 BF16 /
    AMX): on an AVX2-only CPU bf16 is emulated and measured 10x+ slower than fp32 (bench/amp_cpu.py)."""
    if setting == "off":
        return None
    if setting == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    if setting == "fp16" and device.type != "cuda":
        raise PekdError("trainer.amp=fp16 needs CUDA (CPU autocast supports bf16); use trainer.amp=bf16 or auto")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def step_seed(seed: int, rank: int, global_step: int) -> int:
    """Per-rank, per-step torch seed: resumption needs no saved RNG state and survives a world-size change."""
    return (seed * 1_000_003 + rank * 10_007 + global_step) % (2**63 - 1)


class Trainer:
    def __init__(self, cfg: Any, env: DistEnv, run_dir: Path, train_module: TrainModule, teacher: Any,
                 train_loader: Any, eval_loader: Any, mean: tuple[float, ...], std: tuple[float, ...],
                 plan: Any, data_sets: dict[str, dict[str, Any]] | None = None) -> None:
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.data_sets = data_sets or {}  # identities of the train and eval sets, recorded in results.json
        self.tc = cfg.trainer
        self.plan, self.train_loader, self.eval_loader, self.teacher = plan, train_loader, eval_loader, teacher
        self.device = env.device
        self.dtype = amp_dtype(self.tc.amp, self.device)
        self.memory_format = torch.channels_last if self.tc.channels_last else torch.contiguous_format
        self.inputs = Inputs(mean, std, self.device, self.memory_format)

        module: nn.Module = train_module.to(self.device, memory_format=self.memory_format)
        if self.tc.sync_bn and env.distributed:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        self.module = module
        self.ddp: nn.Module = DDP(module, device_ids=[self.device] if self.device.type == "cuda" else None,
                                  find_unused_parameters=False) if env.distributed else module
        lr = self.tc.lr * (plan.global_batch / 256 if self.tc.lr_scaling == "linear" else 1.0)
        self.optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=self.tc.momentum,
                                         weight_decay=self.tc.weight_decay, nesterov=self.tc.nesterov)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(self.tc.milestones),
                                                              self.tc.lr_gamma)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.progress = Progress()
        self.writer: SummaryWriter | None = None
        self.ckpt_dir = run_dir / "checkpoints"

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        sched = self.scheduler.state_dict()
        sched["milestones"] = dict(sched["milestones"])  # Counter is not allowed by weights_only loading
        p = self.progress
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": sched,
                "scaler": self.scaler.state_dict(), "epoch": p.epoch, "step_in_epoch": p.step_in_epoch,
                "global_step": p.global_step, "best_top1": p.best_top1, "history": p.history,
                "pending_eval": p.pending_eval, "global_batch": self.plan.global_batch, "seed": self.cfg.seed}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if s["global_batch"] != self.plan.global_batch or s["seed"] != self.cfg.seed:
            raise PekdError(f"checkpoint was written with global batch {s['global_batch']} and seed {s['seed']}, "
                            f"this run has {self.plan.global_batch} and {self.cfg.seed}; resume with the same recipe")
        self.module.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        sched = dict(s["scheduler"])
        sched["milestones"] = Counter(sched["milestones"])
        self.scheduler.load_state_dict(sched)
        self.scaler.load_state_dict(s["scaler"])
        # .get: checkpoints of earlier pekd versions have no such key (their evaluations ran before them)
        self.progress = Progress(s["epoch"], s["step_in_epoch"], s["global_step"], s["best_top1"],
                                 list(s["history"]), s.get("pending_eval"))

    def resume(self, state: dict[str, Any], path: Path) -> None:
        self.load_state_dict(state)
        p = self.progress
        log.info("resumed from %s: epoch %d, step %d of the epoch, global step %d%s", path, p.epoch,
                 p.step_in_epoch, p.global_step, "" if p.pending_eval is None else
                 f"; epoch {int(p.pending_eval['epoch'])}'s evaluation is pending and runs first")

    def save_checkpoint(self) -> None:
        """Rank 0 writes atomically; every rank first checks the weights (identical under DDP) are finite, so a
        diverged step can never overwrite the last good checkpoint."""
        if not all(bool(torch.isfinite(t).all()) for t in self.module.parameters()):
            self._write_results("failed")
            newest = ckpt.list_checkpoints(self.ckpt_dir)
            raise PekdError(f"non-finite weights after global step {self.progress.global_step}; not checkpointing, "
                            f"the last good checkpoint {str(newest[0]) if newest else '(none yet)'} is kept; "
                            "lower trainer.lr or set trainer.grad_clip")
        if not self.env.is_main:
            return
        ckpt.save(self.state_dict(), ckpt.ckpt_path(self.ckpt_dir, self.progress.global_step))
        ckpt.prune(self.ckpt_dir, self.tc.keep_last)

    # ---------------------------------------------------------------- steps
    def prepare(self, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """The batch on the device and the model input made from it (normalised, in the run's memory format):
        the student, the online teacher and evaluation get this same tensor."""
        return self.inputs(batch)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def _micro_step(self, batch: Batch, sync: bool,
                    divisor: float) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """Forward under autocast, backward outside it (PyTorch's AMP guidance: the backward runs each op in the
        dtype its forward chose); on inner micro-steps no_sync covers both."""
        host = batch  # index/view as the loader made them: a feature bank gathers with them on the host
        x, batch = self.prepare(batch)
        ctx = self.ddp.no_sync() if (not sync and isinstance(self.ddp, DDP)) else nullcontext()
        with ctx:
            with self._autocast():
                feat_t = logits_t = None
                if self.teacher is not None:
                    feat_t, logits_t = self.teacher(x, host)
                logits, losses = self.ddp(x, batch.labels, feat_t, logits_t)
                total = sum(losses.values())
            self.scaler.scale(total / divisor).backward()
        correct = (logits.argmax(1) == batch.labels).sum()
        return {k: v.detach() for k, v in losses.items()}, correct, len(batch)

    def train_step(self, micro: list[Batch]) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """One optimizer step over this rank's micro-batches of a global step; returns summed loss terms, correct
        count, images.

        The step's loss is the mean over the samples really there, across micro-batches and ranks: micro-batch j
        (n_j samples) adds its mean loss times n_j * world / N, N being the step's samples on all ranks (DDP
        averages gradients over the world). With data.on_corrupt=skip a micro-batch can come out shorter, and
        mean / accum would weigh its samples more than the others. With nothing skipped the divisor
        N / (n_j * world) is exactly accum. An empty micro-batch adds nothing; the last non-empty one syncs."""
        sizes = [len(b) for b in micro]
        total = self._step_samples(sum(sizes))
        last = max(j for j, k in enumerate(sizes) if k)
        terms: dict[str, torch.Tensor] = {}
        correct, n = torch.zeros((), device=self.device), 0
        for j, b in enumerate(micro):
            if not sizes[j]:
                continue
            losses, c, k = self._micro_step(b, sync=j == last, divisor=total / (sizes[j] * self.env.world))
            for name, v in losses.items():
                terms[name] = terms.get(name, 0) + v * k
            correct, n = correct + c, n + k
        return terms, correct, n

    def _step_samples(self, local: int) -> float:
        """The global step's samples over all ranks. Only data.on_corrupt=skip can shorten a micro-batch; otherwise
        every rank has its full share and the count needs no all-reduce (nor the device sync reading it)."""
        if self.cfg.data.on_corrupt == "skip" and self.env.distributed:
            counts = torch.tensor([local, local == 0], device=self.device, dtype=torch.float64)
            total, empty = all_reduce_sum(counts).tolist()
        else:
            total, empty = float(local * self.env.world), float(local == 0)
        if empty:
            raise PekdError(f"no readable image in a process's share of global step {self.progress.global_step + 1} "
                            f"({int(empty)} of {self.env.world} processes): data.on_corrupt=skip left nothing to "
                            "train on; replace the corrupt files")
        return total

    # ---------------------------------------------------------------- eval
    def evaluate(self, stop: StopSignal | None = None) -> tuple[float, float] | None:
        """Exact top-1/top-5 (percent) of the exported student (rank 0's weights and buffers) over every rank's
        shard; None when `stop` was requested on any rank before the last batch (pekd.engine.evaluation)."""
        return evaluate(self.module.student, self.eval_loader, self.inputs, self._autocast,
                        lambda: stop is not None and stop.requested)

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        env, tc, p = self.env, self.tc, self.progress
        if env.is_main:
            # Events after the checkpoint (a killed start's) are dropped; the checkpoint's own step is kept.
            purge = p.global_step + 1 if p.global_step else None
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        self.module.train()
        steps = self.train_loader.steps_per_epoch
        if steps == 0:
            raise PekdError(f"the training set has fewer samples than one global batch ({self.plan.global_batch}); "
                            "lower data.batch_size or use more data")
        with StopSignal() as stop:
            # a run stopped during an evaluation resumes with it: it ran after the checkpoint, so it comes first
            status = "running" if p.pending_eval is None else self._evaluate_epoch(stop)
            while p.epoch < tc.epochs and status == "running":
                status = self._run_epoch(stop, steps)
            if status == "running":
                status = "completed"
            self._write_results(status)
            if self.writer:
                self.writer.close()
            if status == "preempted":
                stop.chain()
        return self.results(status)

    def _run_epoch(self, stop: StopSignal, steps: int) -> str:
        env, tc, p = self.env, self.tc, self.progress
        micro_iter = iter(self.train_loader.epoch(p.epoch, p.step_in_epoch))
        bar = _progress_bar(env.is_main and tc.progress, steps, p.step_in_epoch, f"epoch {p.epoch}")
        audit = open(self.run_dir / "logs" / f"samples-rank{env.rank}.txt", "a") if tc.audit_samples else None
        try:
            return self._steps(stop, steps, micro_iter, bar, audit)
        finally:
            _close(bar)
            if audit is not None:
                audit.close()

    def _steps(self, stop: StopSignal, steps: int, micro_iter: Any, bar: Any, audit: Any) -> str:
        env, tc, p = self.env, self.tc, self.progress
        meter: dict[str, torch.Tensor] = {}
        seen = torch.zeros(2, device=self.device, dtype=torch.float64)  # correct, images
        t0 = time.perf_counter()
        while p.step_in_epoch < steps:
            torch.manual_seed(step_seed(self.cfg.seed, env.rank, p.global_step))
            micro = [next(micro_iter) for _ in range(self.plan.accum)]
            if audit is not None:
                audit.write(f"{p.epoch} {p.global_step} " + " ".join(str(int(i)) for b in micro for i in b.index)
                            + "\n")
            terms, correct, n = self.train_step(micro)
            finite = torch.isfinite(torch.stack(list(terms.values()))).all()
            flags = torch.stack([torch.tensor(float(stop.requested), device=self.device), (~finite).float()])
            all_reduce_max(flags)
            if flags[1] > 0:
                self._fail_nonfinite(terms)
            if tc.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.module.parameters(), tc.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            p.step_in_epoch += 1
            p.global_step += 1
            for k, v in terms.items():
                meter[k] = meter.get(k, 0) + v
            seen += torch.stack([correct.to(torch.float64), torch.tensor(float(n), device=self.device,
                                                                          dtype=torch.float64)])
            if bar is not None:
                bar.update(1)
            if p.global_step % tc.log_every_steps == 0 or p.step_in_epoch == steps:
                self._log_train(meter, seen, time.perf_counter() - t0)
                meter, seen, t0 = {}, torch.zeros_like(seen), time.perf_counter()
            if flags[0] > 0:
                self.save_checkpoint()
                log.info("stop requested: checkpointed at global step %d (epoch %d, step %d); resume by "
                         "restarting the same command", p.global_step, p.epoch, p.step_in_epoch)
                return "preempted"
            if tc.max_steps and p.global_step >= tc.max_steps:
                self.save_checkpoint()
                return "stopped"
            if tc.ckpt_every_steps and p.global_step % tc.ckpt_every_steps == 0 and p.step_in_epoch < steps:
                self.save_checkpoint()
        return self._end_epoch(stop)

    def _end_epoch(self, stop: StopSignal) -> str:
        """Checkpoint first, evaluate after: a stop requested during a long evaluation (ImageNet: minutes) must
        not wait for it, and the epoch's training is safe before the evaluation starts."""
        p, tc = self.progress, self.tc
        record: dict[str, float] = {"epoch": float(p.epoch), "lr": self.optimizer.param_groups[0]["lr"]}
        self.scheduler.step()
        p.epoch += 1
        p.step_in_epoch = 0
        if p.epoch % tc.eval_every_epochs and p.epoch != tc.epochs:
            p.history.append(record)
            self.save_checkpoint()
            self._write_results("running")
            return "running"
        p.pending_eval = record
        self.save_checkpoint()
        return self._evaluate_epoch(stop)

    def _evaluate_epoch(self, stop: StopSignal) -> str:
        """Run the pending evaluation of the last finished epoch and record it (history, TensorBoard at the
        epoch's last step, best.pt, results.json) exactly as if it had run before the checkpoint; then rewrite
        that step's checkpoint with the evaluation in it. 'preempted' if stopped before it finished: the
        checkpoint keeps it pending, for the resumed run to do first."""
        p = self.progress
        assert p.pending_eval is not None
        epoch = int(p.pending_eval["epoch"])
        log.info("epoch %d: evaluating", epoch)
        result = self.evaluate(stop)
        if result is None:
            log.info("stop requested during the evaluation of epoch %d: the checkpoint of global step %d keeps "
                     "it pending; resume by restarting the same command", epoch, p.global_step)
            return "preempted"
        top1, top5 = result
        if self.writer:
            self.writer.add_scalar("val/top1", top1, p.global_step)
            self.writer.add_scalar("val/top5", top5, p.global_step)
        log.info("epoch %d: top-1 %.2f%%  top-5 %.2f%%", epoch, top1, top5)
        if top1 > p.best_top1:
            p.best_top1 = top1
            self._export("best.pt")
        p.history.append({**p.pending_eval, "top1": top1, "top5": top5})
        p.pending_eval = None
        self.save_checkpoint()
        self._write_results("running")
        return "running"

    def _export(self, name: str) -> None:
        """The student alone (projectors are training-time only), loadable by pekd.models.load_weights."""
        if self.env.is_main:
            import io

            buf = io.BytesIO()
            torch.save(self.module.student.state_dict(), buf)
            ckpt.atomic_write_bytes(self.run_dir / name, buf.getvalue())

    def _fail_nonfinite(self, terms: dict[str, torch.Tensor]) -> None:
        p = self.progress
        bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
        what = f"loss term {bad[0]!r} = {terms[bad[0]].item()}" if bad else "a loss term on another rank"
        newest = ckpt.list_checkpoints(self.ckpt_dir)
        self._write_results("failed")
        raise PekdError(f"non-finite loss at epoch {p.epoch}, step {p.step_in_epoch} (global step {p.global_step + 1})"
                        f": {what}; the last good checkpoint "
                        f"{str(newest[0]) if newest else '(none yet)'} is kept; lower trainer.lr, set "
                        "trainer.grad_clip, or check the teacher features")

    def _log_train(self, meter: dict[str, torch.Tensor], seen: torch.Tensor, elapsed: float) -> None:
        names = sorted(meter)
        packed = torch.stack([meter[k].to(torch.float64) for k in names] + list(seen))
        all_reduce_sum(packed)
        n = max(packed[-1].item(), 1.0)
        p, lr = self.progress, self.optimizer.param_groups[0]["lr"]
        terms = {k: packed[i].item() / n for i, k in enumerate(names)}
        ips = n / max(elapsed, 1e-9)
        log.info("epoch %d step %d/%d (global %d): loss %.4f (%s) lr %.4g, %.0f images/s", p.epoch,
                 p.step_in_epoch, self.train_loader.steps_per_epoch, p.global_step, sum(terms.values()),
                 " ".join(f"{k} {v:.4f}" for k, v in terms.items()), lr, ips)
        if not self.writer:
            return
        for k, v in terms.items():
            self.writer.add_scalar(f"train/loss_{k}", v, p.global_step)
        self.writer.add_scalar("train/loss", sum(terms.values()), p.global_step)
        self.writer.add_scalar("train/top1", 100.0 * packed[-2].item() / n, p.global_step)
        self.writer.add_scalar("train/lr", lr, p.global_step)
        self.writer.add_scalar("train/images_per_s", ips, p.global_step)

    def results(self, status: str) -> dict[str, Any]:
        p, cfg = self.progress, self.cfg
        evals = [h for h in p.history if "top1" in h]
        last = evals[-1] if evals else {}
        best = max(evals, key=lambda h: h["top1"]) if evals else {}
        return {"status": status, "name": cfg.name, "method": cfg.method.name, "q": cfg.method.q,
                "beta": cfg.method.beta, "student": cfg.model.name, "teacher": cfg.teacher.name,
                "seed": cfg.seed, "seeds": {"train": cfg.seed, "split": cfg.data.split_seed, "bank": cfg.bank.seed},
                "train_set": self.data_sets.get("train"), "eval_set": self.data_sets.get("eval"),
                "epochs": cfg.trainer.epochs, "epoch": p.epoch, "global_step": p.global_step,
                "best_top1": best.get("top1", math.nan), "best_top5": best.get("top5", math.nan),
                "last_top1": last.get("top1", math.nan), "last_top5": last.get("top5", math.nan),
                "paper_top1": cfg.paper_top1 or None, "world_size": self.env.world, "history": p.history}

    def _write_results(self, status: str) -> None:
        if self.env.is_main:
            write_json(self.run_dir / "results.json", self.results(status))
            if status == "completed":
                self._export("student.pt")


def _progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()
