"""The training loop: DDP over student + projectors, AMP, channels_last, accumulation, step-exact checkpoints.

Everything a resumed run needs is a function of the checkpoint: the data order is a pure function of
(seed, epoch) and the global batch (pekd.data.order), and every step reseeds torch from (seed, rank, global step),
so a run stopped at any step and resumed -- on the same or another number of processes -- continues the same
trajectory (bit for bit on the same world size with deterministic algorithms).

The hot path reads nothing from the device in bf16 or fp32 (trainer.amp=auto is bf16 on Ampere and newer GPUs):
losses are checked and the stop flag agreed every trainer.sync_every_steps steps (pekd.engine.checks), metrics
are read back at log steps (pekd.engine.metrics), the EMA keeps its count on the host (pekd.engine.ema), and the
next batch -- bank rows included -- is copied from pinned memory to the GPU while the current step runs
(pekd.engine.prefetch). fp16 (auto's choice only on GPUs without bf16) steps a fused SGD, which takes the
GradScaler's found-inf flag on the device (GradScaler.step reads it on the host for any other optimizer). One
read remains, where it cannot be avoided: data.on_corrupt=skip under DDP agrees on each step's sample count
before the step's first backward (pekd.engine.step). docs/gpu_hot_path.md lists what the step must not sync
and how to audit it.

An epoch ends with its checkpoint, then its evaluation (marked pending in that checkpoint): a stop requested
during a long evaluation is acted on within trainer.sync_every_steps batches, and the resumed run evaluates first
and records the result as an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pekd.data.batch import Batch
from pekd.engine import checkpoint as ckpt
from pekd.engine.checks import PendingChecks, check_due, weights_finite
from pekd.engine.compatibility import MISFIT, check_fits, describe
from pekd.engine.compilation import GRAPHED, compile_mode, compile_training, graph_blocker
from pekd.engine.distributed import DistEnv, data_parallel
from pekd.engine.ema import StudentEMA
from pekd.engine.evaluation import Inputs, evaluate
from pekd.engine.export import export_student
from pekd.engine.lease import Lease
from pekd.engine.metrics import Metrics, TrainMeter, progress_bar
from pekd.engine.optim import build_optimizer
from pekd.engine.precision import NAMES, amp_dtype, autocast, grad_scaler, load_scaler_state
from pekd.engine.preemption import StopSignal
from pekd.engine.prefetch import prefetch
from pekd.engine.progress import Progress
from pekd.engine.results import recorded, run_results, summary_line, write_results
from pekd.engine.schedule import build_scheduler, load_scheduler_state, scheduler_state
from pekd.engine.step import GradientStep, StepResult, step_seed
from pekd.engine.tracker import open_tracker
from pekd.errors import PekdError
from pekd.methods.base import TrainModule

__all__ = ["Trainer", "amp_dtype"]  # amp_dtype: imported from here by pekd.teacher.precompute and the benches

log = logging.getLogger("pekd")


class Trainer:
    def __init__(self, cfg: Any, env: DistEnv, run_dir: Path, train_module: TrainModule, teacher: Any,
                 train_loader: Any, eval_loader: Any, mean: tuple[float, ...], std: tuple[float, ...],
                 plan: Any, data_sets: dict[str, dict[str, Any]] | None = None, lease: Lease | None = None) -> None:
        self.cfg, self.env, self.run_dir = cfg, env, run_dir
        self.data_sets = data_sets or {}  # identities of the train and eval sets, recorded in results.json
        self.lease = lease  # rank 0's lease on run_dir: checked before every write, its generation in each file
        self.tc = tc = cfg.trainer
        self.plan, self.train_loader, self.eval_loader, self.teacher = plan, train_loader, eval_loader, teacher
        self.device = env.device
        self.dtype = amp_dtype(tc.amp, self.device)
        self.memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
        self.inputs = Inputs(mean, std, self.device, self.memory_format)
        self.mean, self.std = tuple(mean), tuple(std)  # recorded in the exports

        module: nn.Module = train_module.to(self.device, memory_format=self.memory_format)
        sync_bn = tc.sync_bn and env.distributed  # alone, BatchNorm already sees the whole batch
        if sync_bn and self.device.type != "cuda":
            raise PekdError(f"trainer.sync_bn=true needs CUDA: torch's SyncBatchNorm refuses {self.device.type} "
                            "tensors; set trainer.sync_bn=false on this machine")
        if sync_bn:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        self.module = module  # the uncompiled, unwrapped module: what checkpoints save and load
        self.ddp = data_parallel(module, self.device) if env.distributed else None
        model: nn.Module = module if self.ddp is None else self.ddp
        mode = compile_mode(tc.compile)
        blocker = graph_blocker(self.device, env.distributed, plan.accum, cfg.data.on_corrupt) \
            if mode == GRAPHED else None
        if blocker is not None:  # the one line: eager, as documented, rather than a surprise compile
            log.info("trainer.compile=%s: no CUDA graphs, the step runs eager: %s (trainer.compile=true compiles "
                     "without graphs)", GRAPHED, blocker)
            mode = None
        if mode is not None:
            model = compile_training(model, teacher, mode)
        self.scaler = grad_scaler(self.device, self.dtype)
        self.step = GradientStep(model, self.ddp, teacher, self.inputs, self.scaler, self.dtype, env.world,
                                 count_skips=cfg.data.on_corrupt == "skip" and env.distributed, lockstep=sync_bn,
                                 graphed=mode == GRAPHED)

        lr = tc.lr * (plan.global_batch / 256 if tc.lr_scaling == "linear" else 1.0)
        self.optimizer = build_optimizer(module, tc, lr, fused=self.dtype == torch.float16)
        # benches that feed their own batches have no loader, and never step the schedule
        self.steps_per_epoch = max(getattr(train_loader, "steps_per_epoch", 1), 1)
        self.scheduler = build_scheduler(self.optimizer, tc, self.steps_per_epoch)
        self.ema = StudentEMA(module.student, tc.ema_decay) if tc.ema_decay > 0 else None
        self.progress = Progress(lr=self.optimizer.param_groups[0]["lr"])
        self._clock = time.perf_counter()  # the start of this process's share of Progress.seconds
        self.metrics: Metrics | None = None
        self.ckpt_dir = run_dir / "checkpoints"
        self.final_eval: Any = None  # trainer.analyze: pekd.science.fused_analysis.FinalEvalAnalysis, set by pekd.train

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": scheduler_state(self.scheduler), "scaler": self.scaler.state_dict(),
                 "epoch": p.epoch, "step_in_epoch": p.step_in_epoch, "global_step": p.global_step,
                 "best_top1": p.best_top1, "history": p.history, "pending_eval": p.pending_eval, "lr": p.lr,
                 "global_batch": self.plan.global_batch, "seed": self.cfg.seed, "amp": NAMES[self.dtype],
                 "seconds": self.elapsed()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def elapsed(self) -> float:
        """Wall seconds the run has spent training and evaluating, this start's included (none of a checkpoint's
        computation depends on it)."""
        return self.progress.seconds + time.perf_counter() - self._clock

    def load_state_dict(self, s: dict[str, Any], path: Path | None = None) -> None:
        check_fits(s, self.module, self.cfg, self.plan.global_batch, path)
        self.module.load_state_dict(s["model"])
        try:
            self.optimizer.load_state_dict(s["optimizer"])
        except (ValueError, KeyError) as e:
            raise PekdError(f"{describe(path)}: its optimizer state does not fit this run's ({e}); {MISFIT}") from None
        current_lr = self.optimizer.param_groups[0]["lr"]
        if "lr" in s:
            load_scheduler_state(self.scheduler, s["scheduler"])
        else:  # pekd before per-step schedules: its MultiStepLR counted epochs; this one counts steps
            self.scheduler.load_state_dict({**self.scheduler.state_dict(), "last_epoch": s["global_step"],
                                            "_last_lr": [g["lr"] for g in self.optimizer.param_groups]})
        load_scaler_state(self.scaler, s["scaler"], s.get("amp"), NAMES[self.dtype])
        if self.ema is not None:
            self.ema.load_state_dict(s["ema"])
        # .get: checkpoints of earlier pekd versions have no such keys (their evaluations ran before them)
        self.progress = Progress(s["epoch"], s["step_in_epoch"], s["global_step"], s["best_top1"],
                                 list(s["history"]), s.get("pending_eval"), s.get("lr", current_lr),
                                 s.get("seconds", 0.0))
        self._clock = time.perf_counter()

    def resume(self, state: dict[str, Any], path: Path) -> None:
        self.load_state_dict(state, path)
        p = self.progress
        log.info("resumed from %s: epoch %d, step %d of the epoch, global step %d%s", path, p.epoch,
                 p.step_in_epoch, p.global_step, "" if p.pending_eval is None else
                 f"; epoch {int(p.pending_eval['epoch'])}'s evaluation is pending and runs first")

    def save_checkpoint(self) -> None:
        """Rank 0 writes atomically; every rank first checks the weights (identical under DDP) are finite, so a
        diverged step can never overwrite the last good checkpoint."""
        if not weights_finite(self.module):
            self._fail(f"non-finite weights after global step {self.progress.global_step}; not checkpointing, "
                       f"the last good checkpoint {self._newest_checkpoint()} is kept; "
                       "lower trainer.lr or set trainer.grad_clip")
        if not self.env.is_main:
            return
        if self.metrics is not None:  # every scalar up to this step is on disk before the checkpoint says it is
            self.metrics.flush()
        path = ckpt.ckpt_path(self.ckpt_dir, self.progress.global_step)
        lease = self.lease
        if lease is None:
            ckpt.save(self.state_dict(), path)
        else:
            ckpt.save(lease.stamp(self.state_dict()), path, lambda: lease.check(f"checkpoint {path.name}"))
        ckpt.prune(self.ckpt_dir, self.tc.keep_last,
                   None if lease is None else lambda: lease.check("older checkpoints (keep_last)"))

    def _newest_checkpoint(self) -> str:
        newest = ckpt.list_checkpoints(self.ckpt_dir)
        return str(newest[0]) if newest else "(none yet)"

    # ---------------------------------------------------------------- steps
    def prepare(self, batch: Batch) -> tuple[torch.Tensor, Batch]:
        """The model input made from a batch (normalised, on the device, in the run's memory format): the student,
        the online teacher and evaluation get this same tensor."""
        return self.inputs(batch)

    def _autocast(self) -> torch.autocast:
        return autocast(self.device, self.dtype)

    def train_step(self, micro: list[Batch]) -> StepResult:
        """The gradients of this rank's micro-batches of the next global step (pekd.engine.step); returns the
        summed loss terms, correct count and images."""
        return self.step(micro, self.progress.global_step)

    def optimizer_step(self) -> None:
        """Clip, step (through the GradScaler), then the per-step schedule and the EMA."""
        if self.tc.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)  # pairs with gradient_as_bucket_view: distributed.data_parallel
        self.progress.lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module.student)

    # ---------------------------------------------------------------- eval
    def evaluate(self, stop: StopSignal | None = None, model: nn.Module | None = None,
                 observe: Any = None) -> tuple[float, float] | None:
        """Exact top-1/top-5 (percent) of the exported student -- or `model`, e.g. its EMA -- with rank 0's weights
        and buffers, over every rank's shard; None when `stop` was requested on any rank before the last batch
        (pekd.engine.evaluation)."""
        return evaluate(self.module.student if model is None else model, self.eval_loader, self.inputs, self._autocast,
                        lambda: stop is not None and stop.requested, agree_every=self.tc.sync_every_steps,
                        observe=observe)

    # ---------------------------------------------------------------- loop
    def finished(self) -> str | None:
        """'completed' or 'stopped' (at trainer.max_steps) when there is nothing left to train or evaluate."""
        p, tc = self.progress, self.tc
        if p.pending_eval is not None:
            return None
        if p.epoch >= tc.epochs:
            return "completed"
        return "stopped" if tc.max_steps and p.global_step >= tc.max_steps else None

    def fit(self) -> dict[str, Any]:
        self._clock = time.perf_counter()  # set-up before fit is not the run's time
        env, p = self.env, self.progress
        lease = self.lease
        steps = self.train_loader.steps_per_epoch
        if steps == 0:
            raise PekdError(f"the training set has fewer samples than one global batch ({self.plan.global_batch}); "
                            "lower data.batch_size or use more data")
        done = self.finished()
        if done is not None:  # a rerun of a finished run trains nothing, and writes only what a stop cut short
            if not self._recorded(done):
                self._write_results(done)
            self._summary(done)
            return self.results(done)
        with StopSignal() as stop:  # before the metrics' set-up (a resume may read tb/): a stop then is a stop
            self.metrics = Metrics(self.run_dir, env.is_main, p.global_step,
                                   open_tracker(self.cfg, self.run_dir) if env.is_main else None,
                                   None if lease is None else lambda: lease.check("its metrics (metrics.csv, tb/)"),
                                   evaluation_pending=p.pending_eval is not None)
            self.module.train()
            # a run stopped during an evaluation resumes with it: it ran after the checkpoint, so it comes first
            status = "running" if p.pending_eval is None else self._evaluate_epoch(stop)
            while status == "running" and self.finished() is None:
                status = self._run_epoch(stop, steps)
            if status == "running":
                status = self.finished() or status
            self._write_results(status)
            self.metrics.close()
            if status in ("completed", "stopped"):
                self._summary(status)
            if status == "preempted":
                stop.chain()
            elif stop.requested:  # after the last check: nothing left to stop, and nothing else said it
                log.info("%s too late to stop: the run is %s", stop.describe(), status)
        return self.results(status)

    def _run_epoch(self, stop: StopSignal, steps: int) -> str:
        env, tc, p = self.env, self.tc, self.progress
        micro_iter = prefetch(iter(self.train_loader.epoch(p.epoch, p.step_in_epoch)), self.device)
        bar = progress_bar(env.is_main and tc.progress, steps, p.step_in_epoch, f"epoch {p.epoch}")
        # line-buffered: a line per step reaches the file at once, so a killed run's audit holds every step it took
        audit = open(self.run_dir / "logs" / f"samples-rank{env.rank}.txt", "a", buffering=1) \
            if tc.audit_samples else None
        try:
            return self._steps(stop, steps, micro_iter, bar, audit)
        finally:
            if bar is not None:
                bar.close()
            if audit is not None:
                audit.close()

    def _steps(self, stop: StopSignal, steps: int, micro_iter: Any, bar: Any, audit: Any) -> str:
        env, tc, p = self.env, self.tc, self.progress
        meter, checks = TrainMeter(self.device), PendingChecks(self.device)
        while p.step_in_epoch < steps:
            torch.manual_seed(step_seed(self.cfg.seed, env.rank, p.global_step))
            micro = [next(micro_iter) for _ in range(self.plan.accum)]
            if audit is not None:
                audit.write(f"{p.epoch} {p.global_step} " + " ".join(str(int(i)) for b in micro for i in b.index)
                            + "\n")
            terms, correct, n = self.train_step(micro)
            checks.add(p, terms)
            stopping = False
            if check_due(tc, p, steps):  # before the optimizer step: with N=1 a non-finite loss never reaches it
                verdict = checks.agree(stop.requested)
                if verdict.non_finite is not None:
                    self._fail_nonfinite(verdict.non_finite)
                stopping = verdict.stop
            self.optimizer_step()
            p.step_in_epoch += 1
            p.global_step += 1
            meter.add(terms, correct, n)
            if bar is not None:
                bar.update(1)
            if p.global_step % tc.log_every_steps == 0 or p.step_in_epoch == steps:
                assert self.metrics is not None
                self.metrics.train(p, steps, meter.reduce(), p.lr, tc.epochs, tc.max_steps)
            if stopping:
                self.save_checkpoint()
                log.info("%s: stopped at the step boundary, checkpointed at global step %d (epoch %d, step %d); "
                         "resume by restarting the same command", stop.describe(), p.global_step, p.epoch,
                         p.step_in_epoch)
                return "preempted"
            if tc.max_steps and p.global_step >= tc.max_steps:
                self.save_checkpoint()
                log.info("stopped at trainer.max_steps=%d, checkpointed at global step %d (epoch %d, step %d); "
                         "raise trainer.max_steps and run the same command to go on", tc.max_steps, p.global_step,
                         p.epoch, p.step_in_epoch)
                return "stopped"
            if tc.ckpt_every_steps and p.global_step % tc.ckpt_every_steps == 0 and p.step_in_epoch < steps:
                self.save_checkpoint()
        return self._end_epoch(stop)

    def _end_epoch(self, stop: StopSignal) -> str:
        """Checkpoint first, evaluate after: a stop requested during a long evaluation (ImageNet: minutes) must
        not wait for it, and the epoch's training is safe before the evaluation starts."""
        p, tc = self.progress, self.tc
        record: dict[str, float] = {"epoch": float(p.epoch), "lr": p.lr}
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
        """Run the pending evaluation of the last finished epoch (the student's, then its EMA's) and record it
        (history, TensorBoard at the epoch's last step, best.pt, results.json) exactly as if it had run before the
        checkpoint; then rewrite that step's checkpoint with the evaluation in it. 'preempted' if stopped before
        it finished: the checkpoint keeps it pending, for the resumed run to do first."""
        p = self.progress
        assert p.pending_eval is not None and self.metrics is not None
        epoch = int(p.pending_eval["epoch"])
        log.info("epoch %d: evaluating", epoch)
        final = self.final_eval is not None and epoch == self.tc.epochs - 1  # trainer.analyze
        result = self.evaluate(stop, observe=self.final_eval.start() if final else None)
        ema = self.evaluate(stop, self.ema.model) if self.ema is not None and result is not None else None
        if result is None or (self.ema is not None and ema is None):
            log.info("%s: stopped during the evaluation of epoch %d; the checkpoint of global step %d keeps it "
                     "pending; resume by restarting the same command", stop.describe(), epoch, p.global_step)
            return "preempted"
        record = {**p.pending_eval, "top1": result[0], "top5": result[1]}
        if ema is not None:
            record.update(ema_top1=ema[0], ema_top5=ema[1])
        self.metrics.scalars(p.global_step, {f"val/{k}": v for k, v in record.items() if "top" in k})
        log.info("epoch %d: top-1 %.2f%%  top-5 %.2f%%%s", epoch, result[0], result[1],
                 "" if ema is None else f"; EMA top-1 {ema[0]:.2f}%  top-5 {ema[1]:.2f}%")
        if result[0] > p.best_top1:
            p.best_top1 = result[0]
            self._export(self.module.student, "best.pt")
        p.history.append(record)
        p.pending_eval = None
        self.save_checkpoint()
        self._write_results("running")
        return "running"

    def _export(self, model: nn.Module, name: str) -> None:
        if self.env.is_main:
            if self.lease is not None:
                self.lease.check(name)
            export_student(model, self.run_dir / name, self.mean, self.std)

    def _fail_nonfinite(self, where: str) -> None:
        self._fail(f"non-finite loss {where}; the last good checkpoint {self._newest_checkpoint()} is kept; "
                   "lower trainer.lr, set trainer.grad_clip, or check the teacher features")

    def _fail(self, error: str) -> None:
        """results.json says 'failed' and why (what `pekd status` shows), then the error ends the run."""
        self._write_results("failed", error)
        raise PekdError(error)

    def _recorded(self, status: str) -> bool:
        exports = ["student.pt"] + (["ema.pt"] if self.ema is not None else []) if status == "completed" else []
        return not self.env.is_main or recorded(self.run_dir, status, self.progress.global_step, exports)

    def _summary(self, status: str) -> None:
        log.info("%s", summary_line(self.results(status), self.tc, self.run_dir))

    def results(self, status: str) -> dict[str, Any]:
        return {**run_results(self.cfg, self.progress, status, self.env.world, self.data_sets),
                "steps_per_epoch": self.steps_per_epoch, "seconds": round(self.elapsed(), 1),
                "global_batch": self.plan.global_batch}

    def _write_results(self, status: str, error: str | None = None) -> None:
        if self.env.is_main:
            write_results(self.run_dir, {**self.results(status), **({"error": error} if error else {})}, self.lease)
            if status == "completed":
                self._export(self.module.student, "student.pt")
                if self.ema is not None:
                    self._export(self.ema.model, "ema.pt")
