"""Process-group set-up from whichever environment the process is in: torchrun, SLURM (submitit), or alone.

One device per process; the backend is nccl on CUDA and gloo on CPU (never CPUs when GPUs were allocated but
torch cannot use them: pekd.engine.devices). Ranks are always *global* ranks: data is
sharded by them (sharding by local rank silently repeats data on every node).

Nothing waits without bound. torch's env:// rendezvous retries its connection to MASTER_ADDR:MASTER_PORT for the
whole process-group timeout, name lookups included, so a first node whose name does not resolve kept a job
retrying for many minutes with nothing in its log; the master is therefore checked first, against its own
deadline (PEKD_RENDEZVOUS_TIMEOUT, 120 s by default), and an unreachable one is one clear error. Collectives get
the caller's timeout (trainer.dist_timeout_s): gloo raises as soon as a dead peer's sockets close (which its
forked DataLoader workers can delay by a few seconds) and after the timeout when a live peer hangs; NCCL's
watchdog tears the process down after it (TORCH_NCCL_ASYNC_ERROR_HANDLING's default). Under SLURM, srun's
--kill-on-bad-exit usually ends the survivors long before that (pekd.cluster.launch).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pekd.engine.devices import check_cuda_usable
from pekd.errors import PekdError

RENDEZVOUS_TIMEOUT_ENV = "PEKD_RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_TIMEOUT_S = 120.0
RENDEZVOUS_RETRY_S = 1.0


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _from_slurm() -> None:
    """Export torchrun-style variables from SLURM's via submitit (MASTER_ADDR is the first node of the job's node
    list). submitit derives MASTER_PORT from the job id only; pekd.cluster.launch mixes in the restart count so that a
    requeued job never meets its previous incarnation's rendezvous."""
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def rendezvous_timeout_s() -> float:
    """How long a rank may take to reach the master: PEKD_RENDEZVOUS_TIMEOUT seconds, 120 by default (time for
    the first task to import torch on a slow shared file system, which it must do before it listens)."""
    text = os.environ.get(RENDEZVOUS_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_RENDEZVOUS_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise PekdError(f"{RENDEZVOUS_TIMEOUT_ENV}={text!r} is not a positive number of seconds")
    return value


def wait_for_rendezvous(addr: str, port: int, rank: int, timeout_s: float) -> None:
    """Return once MASTER_ADDR resolves and (other ranks than 0) its port accepts a connection; raise one error
    naming the address and why once timeout_s has passed.

    Rank 0 hosts the rendezvous store itself, so there is nothing to connect to yet: it only checks the name. A
    refused connection is retried (the master may still be starting); a connect that gets no answer is bounded
    by the time left. A name lookup itself cannot be interrupted, so a resolver that hangs can overrun the
    deadline by one lookup.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
            if rank == 0:
                return
            with socket.create_connection((addr, port), timeout=max(deadline - time.monotonic(), 0.1)):
                return
        except socket.gaierror as e:
            reason = f"name does not resolve: {e.strerror}"
        except ConnectionRefusedError:
            reason = "connection refused: nothing listens on that port"
        except TimeoutError:
            reason = "no answer"
        except OSError as e:
            reason = e.strerror or type(e).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            raise PekdError(
                f"cannot reach the rendezvous at {addr}:{port} within {timeout_s:g} s ({reason}); MASTER_ADDR must "
                "name the first task's node as every node resolves it (on SLURM: the first node of the job's node "
                "list, which DNS or /etc/hosts must know) and the port must be open between nodes; a master that "
                f"starts slowly needs {RENDEZVOUS_TIMEOUT_ENV}=<seconds>")
        time.sleep(min(RENDEZVOUS_RETRY_S, left))


def init_distributed(timeout_s: int = 1800) -> DistEnv:
    """Initialise torch.distributed if the environment describes more than one process.

    timeout_s bounds every collective (and the wait for all ranks to join): it must exceed the longest time one
    rank legitimately waits for another, e.g. rank 0 writing a checkpoint while the others are already in the
    next step's all-reduce.
    """
    if timeout_s <= 0:
        raise PekdError(f"the process-group timeout must be positive, got {timeout_s} s (trainer.dist_timeout_s)")
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        _from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        check_cuda_usable()  # GPUs allocated but unusable: one error, not a silent CPU run
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
            wait_for_rendezvous(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank,
                                rendezvous_timeout_s())
        # PEKD_DIST_BACKEND=gloo lets several ranks share one GPU (NCCL refuses duplicate devices), e.g. in checks.
        backend = os.environ.get("PEKD_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s),
                                device_id=device if backend == "nccl" else None)
    return DistEnv(rank, world, local_rank, device)


def data_parallel(module: nn.Module, device: torch.device) -> DDP:
    """The training module under DDP, with the two settings pekd's step loop relies on.

    broadcast_buffers=False: by default DDP broadcasts rank 0's buffers (BatchNorm's running statistics) to every
    rank at the start of every forward -- one more collective per micro-batch, on the step's critical path. Nothing
    in training reads them: train-mode BatchNorm normalises with the batch's own statistics, so the ranks' losses and
    gradients do not depend on them, and rank 0's own buffers (the ones checkpointed, exported and resumed from) are
    the same sequence with or without the broadcast, since a broadcast from rank 0 never changes rank 0's. Where
    buffers are read, evaluation broadcasts rank 0's first (pekd.engine.evaluation.evaluate, for the student and for
    its EMA), and DDP's construction copies rank 0's parameters and buffers to every rank once.

    gradient_as_bucket_view=True, with the trainer's zero_grad(set_to_none=True): after each backward every .grad is
    a view into DDP's all-reduce bucket, so the reduced gradients need no copy back out of the buckets. The
    set_to_none is deliberate: the next backward makes fresh gradients, and DDP's reducer copies each into its
    bucket *divided by the world size* in one kernel (mul_out by 1 / world), then points .grad at the bucket again.
    Zeroing instead (set_to_none=False) would cost a zero-fill of the buckets, an accumulating add and a separate
    in-place division per gradient -- more kernels on a launch-bound step -- and the first step of every run or
    resume would take the copy path (x * (1 / world)) while later ones divide in place (x / world): for a world size
    that is not a power of two those differ in the last bit, and a resumed run would no longer equal an
    uninterrupted one bit for bit.
    """
    return DDP(module, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=False,
               broadcast_buffers=False, gradient_as_bucket_view=True)


def backend() -> str:
    """The process group's backend, or 'none' for a single process (for the start line)."""
    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else "none"


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's object on every rank (used to agree on the resume checkpoint)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
