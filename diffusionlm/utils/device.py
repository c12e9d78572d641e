"""Where the run executes and at what precision.

Weights, gradients and optimizer state stay float32 (the master copy). On CUDA the forward
and backward passes run under `torch.autocast` in the configured dtype (bf16 by default);
on CPU everything runs in float32, because CPU bf16 autocast is slower than fp32 on most
machines and gains nothing for the small models trained there.
"""

from __future__ import annotations

import contextlib

import torch

from diffusionlm.errors import InputError


def resolve_device(name: str, field: str = "training.device") -> torch.device:
    """"auto" -> cuda when available, else cpu. A requested but missing CUDA is an InputError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"{field}: unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{field}: {name!r} requested but CUDA is not available on this machine "
                         f"(use device = \"cpu\" or \"auto\")")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"{field}: {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"{field}: device type {device.type!r} is not supported (use auto, cpu or cuda)")
    return device


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` (a torch dtype name, e.g. "bfloat16") on CUDA; a no-op for "float32"
    and on CPU, which always runs fp32."""
    if device.type != "cuda" or dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=getattr(torch, dtype))
