"""trainer.amp: which lower precision autocast uses on this device, if any, and the loss scaler that goes with it.

auto is bf16 wherever the hardware computes in bf16 natively, because bf16 keeps fp32's exponent range and needs
no loss scaling. fp16 needs a GradScaler, whose step must skip the optimizer step when a gradient overflowed:
with an ordinary optimizer GradScaler.step reads its found-inf flag on the host every step (a device sync); pekd
steps fp16 with the fused SGD kernel, which takes the flag on the device (pekd.engine.optim), but the scaler is
still extra work and fp16 overflows where bf16 does not, so fp16 is auto's choice only on GPUs older than Ampere
(compute capability < 8.0), which have no bf16 tensor cores. On a CPU auto is bf16 only where oneDNN has native
bf16 kernels (AVX-512 BF16 / AMX): on an AVX2-only CPU bf16 is emulated and measured 10x+ slower than fp32
(bench/amp_cpu.py), so auto is fp32 there.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pekd.errors import PekdError

log = logging.getLogger("pekd")

NAMES: dict[torch.dtype | None, str] = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}
BF16_CAPABILITY = (8, 0)  # Ampere: the first GPUs with bf16 tensor cores


def choose_amp(setting: str, device_type: str, capability: tuple[int, int] | None,
               cpu_bf16: bool) -> torch.dtype | None:
    """The autocast dtype (None: fp32) for trainer.amp=`setting` on a `device_type` device of CUDA compute
    `capability` (None off CUDA) whose CPU has native bf16 kernels or not: a pure function, so the choice can be
    tested for every GPU generation on any machine."""
    if setting == "off":
        return None
    cuda = device_type == "cuda"
    if setting == "auto":
        if cuda:
            return torch.bfloat16 if capability is not None and capability >= BF16_CAPABILITY else torch.float16
        return torch.bfloat16 if cpu_bf16 else None
    if setting == "fp16" and not cuda:
        raise PekdError("trainer.amp=fp16 needs CUDA (CPU autocast supports bf16); use trainer.amp=bf16 or auto")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """choose_amp for this process's device."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    cpu_bf16 = device.type != "cuda" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return choose_amp(setting, device.type, capability, cpu_bf16)


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to `dtype` on `device`, or a disabled one (fp32) when dtype is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only (a disabled one is a no-op: scale() returns the loss, step() just
    steps, and it reads nothing from the device)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any], saved_amp: str | None,
                      amp: str) -> None:
    """Resume the loss scaler across AMP settings (trainer.amp=auto may pick another dtype on another GPU).

    A disabled scaler's state is empty and GradScaler.load_state_dict refuses to load that into an enabled one;
    an enabled scaler's state would be dropped by a disabled one without a word. Both are said instead: fp16
    after a run without a scaler starts from a fresh scale, and a run that no longer needs one drops it.
    saved_amp is None for checkpoints of pekd versions that did not record it."""
    was = saved_amp or ("fp16" if state else "bf16/off")
    if scaler.is_enabled() and not state:
        log.info("the checkpoint was written with trainer.amp %s (no loss scaler); this run trains in %s and starts "
                 "a fresh GradScaler (scale %g)", was, amp, scaler.get_scale())
        return
    if not scaler.is_enabled() and state:
        log.info("the checkpoint's fp16 GradScaler state (scale %g) is dropped: this run trains in %s, which needs "
                 "no loss scaler", float(state.get("scale", float("nan"))), amp)
        return
    scaler.load_state_dict(state)
