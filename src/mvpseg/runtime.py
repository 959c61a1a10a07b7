"""Where and how numbers are computed: the default device, and the one meaning of every ``precision``.

``precision`` is one of :data:`mvpseg.config.PRECISIONS`. "auto" is fp32 on the CPU (bf16 autocast is
fast only on CPUs with AVX512-BF16 or AMX, and many times slower elsewhere: ask for it with "bf16"),
and on CUDA bf16 autocast where the device supports it, else fp16. Training and inference resolve it
here, so the word means the same in both.
"""

from __future__ import annotations

import contextlib

import torch

from .config import PRECISIONS

__all__ = ["autocast", "autocast_dtype", "default_device", "grad_scaler"]


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch device; None means CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``, or None for plain fp32.

    Raises:
        ValueError: an unknown precision (the message lists the valid ones).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """An autocast context for ``precision`` on ``device`` (a null context for fp32)."""
    dtype = autocast_dtype(device, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler where training needs one (fp16 autocast, on CUDA or the CPU: small fp16 gradients
    underflow to zero unless the loss is scaled up), else None."""
    if autocast_dtype(device, precision) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None
