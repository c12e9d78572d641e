"""The one seam where data-parallel training synchronises gradients.

The loop calls `grad_sync.no_sync()` around the backward passes of accumulation micro-steps
(nothing to communicate yet) and `grad_sync.finish()` after the last backward of an
optimizer step, before clipping reads the gradients. A single process uses `LocalGradSync`,
which does nothing; `ddp.DDP` satisfies the same protocol itself (`finish` is its
`finish_gradient_synchronization`), and `parallelize.py` adapts torch's DDP and FSDP2 to it.
"""

from __future__ import annotations

import contextlib
from typing import Protocol


class GradSync(Protocol):
    def no_sync(self) -> contextlib.AbstractContextManager: ...

    def finish(self) -> None: ...


class LocalGradSync:
    """Single process: gradients are already complete after backward."""

    def no_sync(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def finish(self) -> None:
        return None
