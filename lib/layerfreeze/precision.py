"""Mixed precision: bf16 on CUDA cards that support it, fp16 with a gradient scaler on older ones, fp32 on the CPU.

``auto`` follows the environment variable ``LAYERFREEZE_PRECISION`` when it is set: the GPU rehearsal
(``python -m layerfreeze gpu-run --precision fp16``) uses it to try the GPU's bf16 and fp16 paths on the CPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
FORCE_VARIABLE = "LAYERFREEZE_PRECISION"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA card that supports it, fp16 on older cards (Colab's T4), fp32 on the CPU.

    >>> resolve_precision("auto", torch.device("cpu"))
    'fp32'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    forced = os.environ.get(FORCE_VARIABLE, "auto")
    if forced != "auto" and precision in ("auto", forced):  # also when fit hands its resolved choice on
        if forced not in PRECISIONS:
            raise ValueError(f"{FORCE_VARIABLE}={forced!r}; valid: {', '.join(PRECISIONS)}")
        return forced
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"precision={precision!r} is for CUDA; on {device.type} use 'fp32' or 'auto'")
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs its loss scaled so small gradients do not underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
