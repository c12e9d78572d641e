"""The order in which one rank sees rows in one epoch: shard permutation, rank split, shuffle buffer.

Everything is a pure function of (seed, epoch, rank), so re-creating an epoch's stream and
skipping the rows already consumed reproduces it exactly; that is how resume works, without
trusting any iterator state inside `datasets`.

1. Shard order: all ranks permute the shards with the same (seed, epoch) generator, so they
   agree on one global row order, and a fresh permutation every epoch reshuffles at file scale.
2. Rank split: rank r keeps rows r, r + W, r + 2W, ... of that global order. Unlike assigning
   whole shards to ranks, this works for a single-file dataset and keeps ranks within one row
   of each other; every row goes to exactly one rank per epoch.
3. Shuffle buffer: each rank mixes its own rows through a seeded buffer (like `datasets`'
   `shuffle(buffer_size=...)`, but ours so its fill level can be reported and its seed is
   per epoch and per rank).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator

from diffusionlm.errors import InputError


def _rng(*parts: int | str) -> random.Random:
    """A generator seeded from `parts`; string seeds hash with SHA-512, stable across processes."""
    return random.Random("/".join(str(part) for part in parts))


def shard_order(num_shards: int, seed: int | str, epoch: int) -> list[int]:
    """The epoch's shard permutation (identical on every rank)."""
    order = list(range(num_shards))
    _rng("shards", seed, epoch).shuffle(order)
    return order


def rank_rows(rows: Iterable, rank: int, world_size: int) -> Iterator:
    """Every `world_size`-th row, starting at `rank`."""
    return itertools.islice(rows, rank, None, world_size)


class ShuffleBuffer:
    """Reservoir-style shuffle over a stream: hold `size` rows and emit a random one as each new
    row arrives; at the end of the stream, emit the rest in random order.

    `size <= 1` passes rows through unchanged.
    """

    def __init__(self, size: int, seed: int | str, epoch: int, rank: int) -> None:
        self.size = size
        self.rng = _rng("buffer", seed, epoch, rank)
        self.buffer: list = []

    @property
    def fill(self) -> float:
        """Fraction of the buffer holding rows (0.0 with no buffer)."""
        return len(self.buffer) / self.size if self.size > 1 else 0.0

    def shuffle(self, rows: Iterable) -> Iterator:
        if self.size <= 1:
            yield from rows
            return
        for row in rows:
            if len(self.buffer) < self.size:
                self.buffer.append(row)
                continue
            index = self.rng.randrange(self.size)
            yield self.buffer[index]
            self.buffer[index] = row
        self.rng.shuffle(self.buffer)
        while self.buffer:
            yield self.buffer.pop()


def check_same_stream(saved: dict, current: dict) -> None:
    """Refuse a saved loader state whose stream-defining settings differ from this run's."""
    for key, value in current.items():
        if saved.get(key) != value:
            raise InputError(f"data loader state: {key} was {saved.get(key)!r} when saved, "
                             f"this run has {value!r}; the stream cannot be resumed")
