"""Capture and restore every random stream a run draws from, in checkpoint-safe types.

A resumed run must draw exactly the numbers the uninterrupted one would have drawn. The
states are stored as tensors, ints, lists and tuples only, so `torch.load(weights_only=True)`
reads them back (numpy's state array becomes a plain list of ints).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from diffusionlm.diffusion.forward_process import NoiseGenerators
from diffusionlm.errors import InputError


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s noise stream: `seed` itself on rank 0 (so a single-process run
    and rank 0 draw the same noise), an independent 32-bit seed derived from (seed, rank) elsewhere
    (32 bits because numpy's global seed takes no more)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def capture_rng_state(noise: NoiseGenerators) -> dict[str, Any]:
    """Python, numpy, torch (CPU), CUDA and the run's noise generators (host and device), as plain data."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "python": [python_version, list(python_internal), python_gauss],
        "numpy": {"name": name, "keys": keys.tolist(), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        # Only the current device's generator: a run uses one GPU per process, and a state list
        # for every visible GPU could not be restored on a machine with fewer of them.
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "noise": noise.host.get_state(),
        "noise_device": noise.device.get_state(),
    }


def restore_rng_state(state: dict[str, Any], noise: NoiseGenerators) -> None:
    """Inverse of `capture_rng_state`. CUDA states are restored only when CUDA is present.

    A checkpoint from a run on another device type holds a device-noise state of another
    generator type; that is an error (the resumed run could not draw the same noise)."""
    python_version, python_internal, python_gauss = state["python"]
    random.setstate((python_version, tuple(python_internal), python_gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0].cpu())
    noise.host.set_state(state["noise"].cpu())
    if "noise_device" not in state:  # written before the noise had a device stream: nothing more to restore
        return
    device_state = state["noise_device"].cpu()
    if device_state.numel() != noise.device.get_state().numel():
        raise InputError(f"the checkpoint's noise stream was drawn on another device type than "
                         f"{noise.device.device.type}; resume it on the device it was trained on")
    noise.device.set_state(device_state)
