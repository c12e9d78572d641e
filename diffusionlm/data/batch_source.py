"""What every batch source shares: its settings for one rank, and its own speed measurement.

The sources (`StreamingBatches`, `MemmapBatches`) differ in where tokens come from; both are
iterators of `(batch_size, context_length)` LongTensors with `state_dict`/`load_state_dict`,
`metrics`, `provenance` and `close` (see `diffusionlm.data.batches`).
"""

from __future__ import annotations

import time

import torch

from config.schemas import DataConfig


class BatchSource:
    """Base of the batch sources: settings, `iter()`, and tokens/s spent inside `__next__`."""

    def __init__(self, data_config: DataConfig, *, split: str, context_length: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, loop: bool = True, pin_memory: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if context_length <= 0 or batch_size <= 0:
            raise ValueError(f"context_length ({context_length}) and batch_size ({batch_size}) must be positive")
        self.config = data_config
        self.split = split
        self.context_length = context_length
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.loop = loop
        self.pin_memory = pin_memory
        self.order_seed = f"{data_config.shuffle_seed}.{seed}"
        self.epoch = 0
        self._exhausted = False  # a non-looping source that has run out
        self._tokens_since_metrics = 0
        self._busy_s_since_metrics = 0.0

    def __iter__(self) -> BatchSource:
        return self

    def _check_not_exhausted(self) -> None:
        if self._exhausted:
            raise StopIteration

    def _end_epoch(self) -> None:
        """This rank's data for the epoch is used up: stop for good (loop = False), else move on
        to the next epoch (the caller resets its own position within the epoch)."""
        if not self.loop:
            self._exhausted = True
            raise StopIteration
        self.epoch += 1

    def _counted(self, batch: torch.Tensor, started: float) -> torch.Tensor:
        """Record a batch made since `started` (perf_counter) for the speed metric; returns it,
        in pinned memory when `pin_memory` (for CUDA: only a pinned batch's copy to the device
        is truly asynchronous, so the step does not wait on it)."""
        if self.pin_memory:
            batch = batch.pin_memory()
        self._tokens_since_metrics += batch.numel()
        self._busy_s_since_metrics += time.perf_counter() - started
        return batch

    def _tokens_per_s(self) -> float:
        """Tokens produced per second spent making batches since the previous call."""
        busy = self._busy_s_since_metrics
        tokens_per_s = self._tokens_since_metrics / busy if busy > 0 else 0.0
        self._tokens_since_metrics, self._busy_s_since_metrics = 0, 0.0
        return tokens_per_s
