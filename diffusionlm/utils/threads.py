"""How many CPU threads torch uses, decided in one place for every entry point.

torch's own default is the number of physical cores, which on a machine shared with other jobs
oversubscribes it: on a loaded 2-core machine one thread ran a training step 4.3x faster than
two. So the count is a setting (`num_threads`), and when it is left unset we follow the
convention every OpenMP program follows: `OMP_NUM_THREADS` if exported, else the cores this
process may run on.
"""

from __future__ import annotations

import os

import torch

from diffusionlm.errors import InputError


def default_num_threads() -> int:
    """`OMP_NUM_THREADS` (its first entry, OpenMP allows a nested list) or the usable cores."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value:
        first = value.split(",")[0].strip()
        if not first.isdigit() or int(first) <= 0:
            raise InputError(f"OMP_NUM_THREADS={value!r} is not a positive integer")
        return int(first)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def apply_num_threads(requested: int | None) -> int:
    """Set torch's intra-op thread count to `requested` (None: `default_num_threads()`); returns it."""
    count = requested if requested is not None else default_num_threads()
    torch.set_num_threads(count)
    return count
