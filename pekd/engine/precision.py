"""trainer.amp: which lower precision autocast uses on this device, if any."""

from __future__ import annotations

import torch

from pekd.errors import PekdError


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


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to `dtype` on `device`, or a disabled one (fp32) when dtype is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
