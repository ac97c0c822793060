"""`python -m bench.gpu_check.nccl`: a real NCCL process group of world size 1 on this node's GPU.

Multi-rank NCCL needs one GPU per rank (NCCL refuses two ranks on one device), so on a one-GPU node this is what
can be shown: torch's NCCL build loads, a communicator is created eagerly on the device (device_id), and the
collectives pekd uses (all_reduce for the loss checks and metrics, broadcast for resume agreement, all_gather
for SyncBatchNorm) run on CUDA tensors and return the right values. pekd.engine.distributed creates no group at
world size 1, so this step makes its own, as torchrun's env:// would.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from bench.gpu_check.common import NOT_CHECKED, PASS, has_cuda, run_step


def main() -> tuple[str, str, dict[str, Any]]:
    if not has_cuda():
        return NOT_CHECKED, "no CUDA device (multi-rank NCCL needs 2 GPUs; this checks a 1-rank group)", {}
    if not dist.is_nccl_available():
        raise RuntimeError("this torch build has no NCCL")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60), device_id=device)
    try:
        assert dist.get_backend() == "nccl", dist.get_backend()
        x = torch.arange(1024, device=device, dtype=torch.float32)
        dist.all_reduce(x)
        dist.broadcast(x, src=0)
        gathered = torch.empty(1024, device=device)
        dist.all_gather_into_tensor(gathered, x)
        dist.barrier()
        torch.cuda.synchronize()
        expected = torch.arange(1024, device=device, dtype=torch.float32)
        assert torch.equal(x, expected) and torch.equal(gathered, expected), "a collective changed the values"
    finally:
        dist.destroy_process_group()
    version = ".".join(map(str, torch.cuda.nccl.version()))
    return PASS, (f"NCCL {version}: 1-rank group on {torch.cuda.get_device_name(device)}, all_reduce + broadcast + "
                  "all_gather on CUDA tensors (multi-rank NCCL needs 2 GPUs)"), {"nccl": version}


if __name__ == "__main__":
    run_step("nccl_1proc", main)
