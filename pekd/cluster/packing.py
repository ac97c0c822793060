"""Several runs per GPU (`pekd submit --runs-per-gpu K`): one array task per pack of runs, each run its own process.

One resnet8x4-sized student leaves most of a GPU idle, and the paper's CIFAR-100 table is dozens of them. With
--runs-per-gpu K, launchers/submit.py cuts a sweep's points, in order, into packs of K x --gpus runs (K with --gpus
0: CPU runs) and submits one array task per pack. The task's process (PackedJob, run by submitit) starts one
training process per run -- world size 1, `CUDA_VISIBLE_DEVICES` naming the GPU it shares with K-1 others (the i-th
run of a pack on the task's GPU i // K), under CUDA MPS when the node offers it (pekd.cluster.mps) -- and waits for
all of them. Each run keeps what makes it a run: its run directory, lease, logs, results.json and its row in the
launch record (with its pack's array task as its job), so `pekd status` and `pekd report` see K runs, not one task.

- A stop (SLURM's USR2 before the time limit, a preemption, `scancel --signal=USR2`) stops every run of the pack:
  SLURM signals every process of the task, and the task's process forwards the signal to its runs as well (a site
  whose process tracking signals only the task's own process would otherwise stop none). Each run checkpoints at
  its step boundary and exits 3; once all have ended, the task hands the signal to submitit's handler, which
  requeues it -- if any run stopped short of its end. The requeued task resumes every run that has not completed,
  from its run directory, and does not start the completed ones again.
- A run that fails -- an exception, a user error, a process killed outright (the OOM killer) -- is marked failed in
  its own results.json (the error and the job), and its pack mates train on. It is not retried on its own (its
  siblings' progress must not be spent on a run that fails again); a requeue of the task for a stop starts it
  again with the others, and `pekd status --failed` prints the command that resubmits it. Once every run has
  ended, the task fails (exit status 1, SLURM's FAILED) naming the failed runs.
- The task's own process dying (killed with its runs) is a crash of the task: the batch script requeues it, up to
  --max-failures times in a row without a new checkpoint in any of its runs (pekd.cluster.launch).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import submitit
from omegaconf import DictConfig, OmegaConf

from pekd.cluster.launch import RequeuedJob, failure_summary, mark_failed, restart_count, resumable
from pekd.cluster.mps import gpu_sharing, run_device
from pekd.engine.logs import CONSOLE_LEVEL
from pekd.engine.status import completed
from pekd.errors import PekdError

STOPPED = 3  # the exit status of a run stopped at a step boundary with its checkpoint (pekd train's)
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
RUN_CONFIG = "pekd_run.{index}.yaml"  # each run's config, beside submitit's files of the task
T = TypeVar("T")


def check_args(args: argparse.Namespace) -> None:
    """Only runs of world size 1 can share a GPU: refuse what would make a packed run multi-process."""
    k = args.runs_per_gpu
    if k == 1:
        return
    if args.local:
        raise PekdError(f"--runs-per-gpu {k} packs runs into SLURM array tasks; with --local, run them side by side "
                        f"with --parallel {k}")
    if args.nodes > 1:
        raise PekdError(f"--runs-per-gpu {k} packs single-process runs onto one node's GPUs, but --nodes {args.nodes} "
                        "asks for multi-node (DDP) runs; drop --nodes, or --runs-per-gpu")
    if args.gpus == 0 and args.tasks_per_node > 1:
        raise PekdError(f"--runs-per-gpu {k} packs single-process runs, but --tasks-per-node {args.tasks_per_node} "
                        "asks for multi-process (DDP) CPU runs; drop --tasks-per-node, or --runs-per-gpu")


def runs_per_task(args: argparse.Namespace) -> int:
    """K runs on each of the task's --gpus GPUs; K CPU runs with --gpus 0."""
    return args.runs_per_gpu * max(args.gpus, 1)


def packs(runs: Sequence[T], per_task: int) -> list[list[T]]:
    """Consecutive runs, per_task at a time (the last pack may be smaller)."""
    return [list(runs[i:i + per_task]) for i in range(0, len(runs), per_task)]


def describe(groups: list[list[Any]], args: argparse.Namespace) -> list[str]:
    """--dry-run's account of the packing: which run goes to which array task and GPU."""
    runs = sum(len(g) for g in groups)
    where = (f"{args.runs_per_gpu} per GPU, {runs_per_task(args)} per task with --gpus {args.gpus}; under CUDA MPS "
             "where the node has nvidia-cuda-mps-control" if args.gpus else
             f"{args.runs_per_gpu} CPU runs per task (set trainer.threads so that they share its CPUs)")
    lines = [f"# packing: {runs} run{'s' if runs != 1 else ''} in {len(groups)} array task"
             f"{'s' if len(groups) != 1 else ''}, {where}; each run its own process (world size 1)"]
    for task, group in enumerate(groups):
        for slot, run in enumerate(group):
            device = f"GPU {slot // args.runs_per_gpu}" if args.gpus else "CPU"
            lines.append(f"# task {task}, {device}: {run.run_dir}: {' '.join(run.overrides)}".rstrip())
    return lines


def visible_devices(gpus: int) -> list[str]:
    """The task's GPUs as CUDA_VISIBLE_DEVICES names them (SLURM sets it for a job with GPUs); 0..gpus-1 without."""
    if gpus == 0:
        return []
    given = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return given if len(given) >= gpus else [str(i) for i in range(gpus)]


class StopForwarding:
    """While the runs train: remember the first stop signal, and send every stop signal on to the runs still alive.
    The handler only signals (no I/O: it may run in the middle of a write); the previous handlers -- submitit's --
    come back on exit, for the hand-over."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.runs: list[subprocess.Popen[bytes]] = []
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        for run in self.runs:
            if run.returncode is None:  # not reaped yet, so its pid is still its own
                try:
                    os.kill(run.pid, signum)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> StopForwarding:
        for s in STOP_SIGNALS:
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def outcome(returncode: int, stopping: bool) -> str:
    """A run process's end in words: finished (completed, or stopped at trainer.max_steps), stopped (checkpointed, or
    killed by the stop before its trainer listened: either way it resumes from its newest checkpoint), or failed."""
    if returncode == 0:
        return "finished"
    if returncode == STOPPED or (stopping and -returncode in STOP_SIGNALS):
        return "stopped"
    if returncode < 0:
        return f"failed: killed by {signal.Signals(-returncode).name}"
    return f"failed: exit status {returncode}"


def holds_this_run(run_dir: Path, cfg: DictConfig) -> bool:
    """Whether the run directory is this run's (or still empty): a run refused because the directory holds another
    run's config must not mark that run failed."""
    from pekd.cluster.submit_checks import check_run_dir

    try:
        check_run_dir(run_dir, resumable(cfg))
    except PekdError:
        return False
    return True


def marked_failed(run_dir: Path) -> bool:
    """Whether the run's results.json says failed (its process marks its own failures where it can)."""
    try:
        return json.loads((run_dir / "results.json").read_text()).get("status") == "failed"
    except (OSError, ValueError, AttributeError):
        return False


class PackedJob(RequeuedJob):
    """The runs of one array task, each in its own process; resubmitted whole on requeue (module docstring)."""

    def __init__(self, cfgs: list[DictConfig], gpus: int, runs_per_gpu: int, max_failures: int = 3) -> None:
        self.cfgs = cfgs
        self.gpus = gpus
        self.runs_per_gpu = runs_per_gpu
        self.max_failures = max_failures

    def run_dirs(self) -> list[Path]:
        return [Path(str(cfg.run_dir)) for cfg in self.cfgs]

    def __call__(self) -> dict[str, str]:
        env = submitit.JobEnvironment()
        cfgs = [resumable(cfg) for cfg in self.cfgs] if restart_count() > 0 else self.cfgs

        def say(text: str) -> None:
            print(f"pekd: task {env.job_id}: {text}", file=sys.stderr, flush=True)

        ends: dict[Path, str] = {}
        todo = []
        for slot, cfg in enumerate(cfgs):
            run_dir = Path(str(cfg.run_dir))
            if completed(run_dir):
                ends[run_dir] = "finished"
                say(f"{run_dir}: completed already, not started again")
            else:
                todo.append((slot, cfg))
        sharing = gpu_sharing(say) if self.gpus and todo else nullcontext({})
        with sharing as mps_env, StopForwarding() as stop:
            started = []
            for slot, cfg in todo:
                if stop.signum is not None:  # stopped while starting: the rest waits for the requeue
                    ends[Path(str(cfg.run_dir))] = "stopped"
                    continue
                stop.runs.append(self._start(slot, cfg, env, mps_env))
                started.append((Path(str(cfg.run_dir)), cfg, stop.runs[-1]))
                say(f"started {cfg.run_dir} (pid {stop.runs[-1].pid}"
                    f"{', GPU ' + str(slot // self.runs_per_gpu) if self.gpus else ''})")
            for run_dir, cfg, run in started:
                run.wait()
                ends[run_dir] = end = outcome(run.returncode, stop.signum is not None)
                say(f"{run_dir}: {end}")
                if end.startswith("failed") and not marked_failed(run_dir) and holds_this_run(run_dir, cfg):
                    mark_failed(run_dir, end.removeprefix("failed: "), env.job_id)  # its process could not say why
        stopped = [d for d, end in ends.items() if end == "stopped"]
        if stop.signum == signal.SIGUSR2 and stopped:
            say(f"SIGUSR2: {len(stopped)} of {len(cfgs)} runs stopped with a checkpoint; submitit requeues the task")
            stop.previous[signal.SIGUSR2](signal.SIGUSR2, None)  # submitit's: checkpoint() below, requeue, exit
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # a stop arriving now has nothing left to stop
        self._failures().clear()
        failed = {d: end for d, end in ends.items() if end.startswith("failed")}
        if failed:
            self._record_exit("failed")
            raise PekdError(f"{len(failed)} of {len(cfgs)} runs failed (each results.json says why; the others "
                            f"completed or stopped): {'; '.join(f'{d}: {e}' for d, e in failed.items())}")
        return {str(d): end for d, end in ends.items()}

    def _start(self, slot: int, cfg: DictConfig, env: submitit.JobEnvironment,
               mps_env: dict[str, str]) -> subprocess.Popen[bytes]:
        """One run's process: `python -m pekd.cluster.packing CONFIG JOB` with world size 1, on its GPU, its per-step
        lines kept to its own log (K runs interleaving on the task's console would be unreadable)."""
        config = env.paths.folder / RUN_CONFIG.format(index=slot)
        config.write_text(OmegaConf.to_yaml(cfg))
        run_env = {**os.environ, **mps_env, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                   CONSOLE_LEVEL: "WARNING"}
        if self.gpus:
            run_env["CUDA_VISIBLE_DEVICES"] = run_device(slot // self.runs_per_gpu, visible_devices(self.gpus), mps_env)
        return subprocess.Popen([sys.executable, "-m", "pekd.cluster.packing", str(config), env.job_id], env=run_env)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's handler once every run has checkpointed and ended; the requeued task finds each
        run's newest checkpoint in its run directory."""
        self._record_exit("preempted")
        return submitit.helpers.DelayedSubmission(
            PackedJob([resumable(cfg) for cfg in self.cfgs], self.gpus, self.runs_per_gpu, self.max_failures))


def train_one(config: Path, job_id: str) -> int:
    """One run of a pack, in its own process: 0 completed, 3 stopped with a checkpoint, 2 a user error, 1 a crash;
    a failure is marked in the run's results.json, so that its row says so while its pack mates train on."""
    from pekd.config import Config
    from pekd.engine.distributed import shutdown
    from pekd.train import run

    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(config))
    assert isinstance(cfg, DictConfig)
    run_dir = Path(str(cfg.run_dir))
    try:
        results = run(cfg)
    except PekdError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        if holds_this_run(run_dir, cfg):
            mark_failed(run_dir, str(error), job_id)
        return 2
    except Exception as error:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a dead DataLoader worker's handler (pekd.cluster.launch)
        traceback.print_exc()
        if holds_this_run(run_dir, cfg):
            mark_failed(run_dir, failure_summary(error), job_id)
        return 1
    finally:
        shutdown()
    return STOPPED if results["status"] == "preempted" else 0


if __name__ == "__main__":
    sys.exit(train_one(Path(sys.argv[1]), sys.argv[2]))
