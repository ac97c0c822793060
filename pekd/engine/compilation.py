"""trainer.compile: torch.compile of what runs every step -- the training module and the online teacher -- and,
with trainer.compile=reduce-overhead, CUDA graphs of it.

Under DDP the DDP module itself is compiled (torch's guidance for DDP + torch.compile): TorchDynamo's DDP
optimizer splits the graph at DDP's gradient-bucket boundaries so that the all-reduces still overlap the backward,
and DDP's own forward (no_sync included) keeps working. Compiling wraps, it does not change the modules: the
trainer keeps the uncompiled module and saves its state_dict, so checkpoints carry the same keys as an eager run
(no `_orig_mod.` prefixes) and resume eager or compiled, on any world size. Evaluation runs the uncompiled
student (its batches differ in size; it runs once an epoch).

CUDA graphs (trainer.compile=reduce-overhead). The paper's CIFAR step (resnet32x4 -> resnet8x4, batch 64) is
~470 small kernels, each launched from Python: on an H100 the launches, not the arithmetic, set its pace. A
graph replays them in one launch. Two ways to get one were weighed:

- torch.compile(mode="reduce-overhead") -- chosen. Inductor records the compiled forward and the compiled
  backward as CUDA graphs (cudagraph trees) and copies each step's fresh inputs into the graph's own static
  buffers, so the batch may come from any pipeline (torch, device, FFCV, DALI: the step normalises it into a new
  tensor anyway); parameters and buffers are static inputs, so BatchNorm's running-stat updates may stay inside
  the graph. The optimizer step, the GradScaler, the per-step lr schedule and the EMA stay eager, exactly as
  they are without graphs: checkpoints, the per-step reseed, resume bit-exactness and the stop at a step
  boundary do not change, and the optimizer's foreach/fused SGD is a handful of launches. Where Inductor finds
  a graph it cannot record, it runs that graph without one and counts it (`cudagraph_skips`), never wrongly.
- An explicit torch.cuda.graphs capture of forward + backward + optimizer step would also graph the optimizer,
  but needs every tensor the step touches at a fixed address: a capturable optimizer with the lr as a device
  tensor (the schedule changes it every step), grads kept allocated (pekd sets them to None each step), the
  GradScaler's host-side update out of the graph, input batches copied into static buffers by hand -- a second
  training step beside the eager one, with its own checkpoint format, for a few launches more.

Graphs are recorded only where they give the eager step's results; elsewhere the step runs eager, said in ONE
log line (`graph_blocker`): not on CUDA (graphs are a CUDA feature); DDP (its all-reduces run from autograd
hooks between the graph's pieces, which a graph cannot hold); accumulation over micro-batches (the second
backward adds into .grad tensors that the graph allocated and its next replay overwrites -- torch's own
warning); data.on_corrupt=skip (a skipped sample changes the batch's shape; each new shape would compile and
record anew).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pekd.engine.determinism import inductor_deterministic
from pekd.teacher.online import OnlineTeacher

GRAPHED = "reduce-overhead"


def compile_mode(setting: bool | str) -> str | None:
    """torch.compile's mode for a trainer.compile setting (validated by pekd.config): None for false, 'default'
    for true (what trainer.compile=true always meant), else the mode named."""
    if setting is False:
        return None
    return "default" if setting is True else str(setting)


def graph_blocker(device: torch.device, distributed: bool, accum: int, on_corrupt: str) -> str | None:
    """Why this run's step cannot be a CUDA graph (see the module doc), or None when it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, this run trains on {device.type}"
    if distributed:
        return "DDP's gradient all-reduces run from autograd hooks that a CUDA graph cannot hold"
    if accum > 1:
        return (f"the step accumulates {accum} micro-batches, and a replay would overwrite the .grad tensors the "
                "graph allocated (raise data.max_micro_batch to train one micro-batch a step)")
    if on_corrupt == "skip":
        return "data.on_corrupt=skip can shorten a batch, and every new shape would be recorded anew"
    return None


def compile_training(model: nn.Module, teacher: Any, mode: str = "default") -> nn.Module:
    """`model` (the training module, or its DDP wrapper) compiled in torch.compile's `mode`; an online teacher's
    model compiled in place in the same mode. A feature bank is a table lookup: nothing to compile."""
    inductor_deterministic()
    if isinstance(teacher, OnlineTeacher):
        teacher.model = torch.compile(teacher.model, mode=mode)
    return torch.compile(model, mode=mode)
