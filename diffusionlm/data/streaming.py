"""Streaming batches: rows from a `datasets` stream -> tokens -> (batch_size, context_length) ids.

The pipeline for one rank, every epoch:

    shards in a per-epoch order -> every world_size-th row -> shuffle buffer    (order.py)
    -> encode(text) + [eot], in worker processes, order kept                    (encoding.py)
       (pre-tokenized rows, `[data].token_field`, skip this step: they hold their ids and eot)
    -> pack into windows or pad one row per sequence                            (packing.py)

With `[data].format = "sft"` a row is a (prompt, response) pair, padded to one sequence
(`sft.py`), and a batch is an `SFTBatch` (ids plus each row's prompt length).

The position is a few integers plus the packing carry-over: (epoch, rows consumed in this
epoch, carry tokens). Because the row order is a pure function of (seeds, epoch, rank),
resuming re-creates the epoch's stream, skips the consumed rows without tokenizing them, and
continues token for token as if never interrupted. We deliberately do not use `datasets`'
own iterator state for this (its resume has had correctness bugs with shuffling and sharding).

Bad data is an error, never a silent skip: invalid UTF-8, a missing or non-string text field,
or a split with no rows for this rank raise an `InputError` naming the dataset and field.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator

import torch

from config.schemas import DataConfig
from diffusionlm.data.batch_source import BatchSource
from diffusionlm.data.encoding import OrderedEncoder
from diffusionlm.data.order import ShuffleBuffer, check_same_stream, rank_rows, shard_order
from diffusionlm.data.packing import Packer, pad_document
from diffusionlm.data.sft import SFTBatch, SFTPairEncoder, pad_pair
from diffusionlm.data.sources import open_source
from diffusionlm.errors import InputError

logger = logging.getLogger(__name__)


class StreamingBatches(BatchSource):
    """Iterator of `torch.LongTensor (batch_size, context_length)` batches (`SFTBatch`es for SFT) for one rank.

    loop=True (training) starts a new epoch, reshuffled, whenever the data runs out and never
    stops. loop=False (validation) stops after one pass and drops the last partial batch (and,
    in pack mode, the final partial window). To repeat the same validation pass, save
    `state_dict()` before the first batch and `load_state_dict` it before each pass.

    The row order depends on `[data].shuffle_seed` and `seed` together (the trainer passes its
    own seed), on the epoch and on the rank. Each rank has its own state; save one per rank.
    """

    def __init__(self, data_config: DataConfig, encode: Callable[[str], list[int]], eot_token_id: int, *,
                 split: str, context_length: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, loop: bool = True, pin_memory: bool = False) -> None:
        super().__init__(data_config, split=split, context_length=context_length, batch_size=batch_size, rank=rank,
                         world_size=world_size, seed=seed, loop=loop, pin_memory=pin_memory)
        self.eot_token_id = eot_token_id
        self.source = open_source(data_config, split)
        self.is_sft = data_config.format == "sft"
        if self.is_sft:
            encode = SFTPairEncoder(encode, context_length, self.source.label)
        self.encoder = OrderedEncoder(encode, eot_token_id, data_config.num_workers)

        self.rows_consumed = 0  # rows of this epoch, in this rank's order, already in batches or carry
        self.packer = Packer(context_length)
        self._documents: Iterator[list[int]] | None = None  # the current epoch's encoded rows
        self._buffer: ShuffleBuffer | None = None

    def __next__(self) -> torch.Tensor | SFTBatch:
        self._check_not_exhausted()
        start = time.perf_counter()
        if self.is_sft:
            rows, prompt_lengths = zip(*(pad_pair(*self._next_document(), self.context_length, self.eot_token_id)
                                         for _ in range(self.batch_size)))
            batch = SFTBatch(torch.tensor(rows, dtype=torch.long), torch.tensor(prompt_lengths, dtype=torch.long))
        else:
            batch = torch.tensor([self._next_sequence() for _ in range(self.batch_size)], dtype=torch.long)
        return self._counted(batch, start)

    def _next_sequence(self) -> list[int]:
        if self.config.mode == "pack":
            return self.packer.next_window(self._next_document)
        return pad_document(self._next_document(), self.context_length, self.eot_token_id)

    def _next_document(self) -> list[int]:
        """The next encoded row; at the end of an epoch, the next epoch (loop) or StopIteration."""
        while True:
            if self._documents is None:
                self._documents = self._epoch_documents()
            document = next(self._documents, None)
            if document is not None:
                self.rows_consumed += 1
                return document
            if self.rows_consumed == 0:
                raise InputError(f"dataset {self.source.label}: no rows"
                                 + (f" for rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""))
            self._documents = None
            self._end_epoch()
            self.rows_consumed = 0

    def _epoch_documents(self) -> Iterator[list[int]]:
        """This epoch's encoded rows for this rank, after the `rows_consumed` already used."""
        order = shard_order(self.source.num_shards, self.order_seed, self.epoch)
        token_field = self.config.token_field
        rows = self.source.iter_token_rows(order, token_field) if token_field else self.source.iter_texts(order)
        rows = rank_rows(rows, self.rank, self.world_size)
        self._buffer = ShuffleBuffer(self.config.shuffle_buffer_size, self.order_seed, self.epoch, self.rank)
        rows = self._buffer.shuffle(rows)
        skipped = sum(1 for _ in itertools.islice(rows, self.rows_consumed))
        if skipped < self.rows_consumed:
            raise InputError(
                f"dataset {self.source.label}: loader state says {self.rows_consumed} rows of epoch {self.epoch} "
                f"were used, but rank {self.rank} has only {skipped}; the data changed since the checkpoint"
            )
        # Pre-tokenized rows already end with their `eot`: used as stored, never re-tokenized.
        return rows if token_field else self.encoder.encode_stream(rows)

    def state_dict(self) -> dict:
        """This rank's position; plain ints/strs/bools and one tensor, so `torch.load(weights_only=True)` reads it."""
        return {
            "epoch": self.epoch,
            "rows_consumed": self.rows_consumed,
            "carry": torch.tensor(self.packer.carry, dtype=torch.long),
            "exhausted": self._exhausted,
            "fingerprint": self.source.provenance["fingerprint"],
            **self._stream_identity(),
        }

    def _stream_identity(self) -> dict:
        """Settings that define the stream itself: a saved state only resumes under the same ones."""
        return {
            "rank": self.rank,
            "world_size": self.world_size,
            "order_seed": self.order_seed,
            "mode": self.config.mode,
            "format": self.config.format,
            "document_separator": self.config.document_separator,
            "token_field": self.config.token_field,
            "context_length": self.context_length,
            "shuffle_buffer_size": self.config.shuffle_buffer_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was saved; the stream is rebuilt at the next batch."""
        check_same_stream(state, self._stream_identity())
        if state["fingerprint"] != self.source.provenance["fingerprint"]:
            logger.warning("dataset %s changed since the loader state was saved (fingerprint %s -> %s); resuming anyway",
                           self.source.label, state["fingerprint"], self.source.provenance["fingerprint"])
        self.epoch = int(state["epoch"])
        self.rows_consumed = int(state["rows_consumed"])
        self.packer = Packer(self.context_length, state["carry"].tolist())
        self._exhausted = bool(state["exhausted"])
        self._documents = None
        self._buffer = None

    def metrics(self) -> dict[str, float]:
        """Since the previous call: tokens produced per second spent inside `__next__` (the loader's
        own speed; workers make it higher than encoding alone), plus the current shuffle buffer
        fill (0..1) and epoch."""
        return {
            "tokens_per_s": self._tokens_per_s(),
            "shuffle_buffer_fill": self._buffer.fill if self._buffer is not None else 0.0,
            "epoch": float(self.epoch),
        }

    def provenance(self) -> dict:
        """What data this is, to log once per run: dataset, split, files, fingerprint and settings."""
        return {
            **self.source.provenance,
            "mode": self.config.mode,
            "context_length": self.context_length,
            "shuffle_buffer_size": self.config.shuffle_buffer_size,
            "shuffle_seed": self.config.shuffle_seed,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def close(self) -> None:
        """Stop tokenizer worker processes, if any."""
        self.encoder.close()
