"""Token files: one flat stream of token ids on disk (`.dat`) plus a sidecar JSON, read as windows.

The format is the legacy one (nanoGPT's `train.bin`): raw little-endian uint16 ids when the
vocabulary fits, else uint32, documents concatenated with `eot` after each, exactly as the
streaming loader would produce them. `diffusionlm-make-data` writes it; the sidecar
`<name>.dat.json` records what the bytes mean (dtype, token count, the tokenizer's fingerprint,
the source's provenance), so a file is never read with the wrong tokenizer or as a truncated copy.

Windows are `context_length` tokens cut at multiples of it. Training (`loop=True`) with
`windows = "random"` visits every window once per epoch in a seeded shuffle, and each epoch
shifts the cut points by a seeded offset so windows do not always start at the same tokens;
`"sequential"` and validation read windows in file order. Rank r takes windows r, r + W, ...
of the epoch's order, so ranks are disjoint. The position is (epoch, windows consumed), so
resume is exact by construction.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config.schemas import DataConfig
from diffusionlm.data.batch_source import BatchSource
from diffusionlm.data.order import check_same_stream
from diffusionlm.errors import InputError

FORMAT = "diffusionlm-memmap-v1"


def sidecar_path(dat_path: Path) -> Path:
    """`train.dat` -> `train.dat.json`."""
    return dat_path.with_name(dat_path.name + ".json")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50k vocabulary does), else uint32; little-endian on disk."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@dataclass(frozen=True)
class TokenFile:
    path: Path
    tokens: np.ndarray  # a read-only memmap
    meta: dict  # the sidecar


def open_token_file(path: Path, *, tokenizer_fingerprint: str, vocab_size: int, eot_token_id: int) -> TokenFile:
    """Map `path` after checking its sidecar against the file and the configured tokenizer."""
    sidecar = sidecar_path(path)
    if not path.is_file():
        raise InputError(f"data.data_files: {path} not found (a .dat file written by diffusionlm-make-data)")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{sidecar}: missing; a .dat file is only read with the sidecar diffusionlm-make-data "
                         f"writes beside it") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{sidecar}: cannot read the sidecar ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{sidecar}: not a {FORMAT} sidecar")
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    expected = meta["num_tokens"] * dtype.itemsize
    if path.stat().st_size != expected:
        raise InputError(f"{path}: holds {path.stat().st_size} bytes but its sidecar says {meta['num_tokens']} "
                         f"{dtype.name} tokens ({expected} bytes); the file is incomplete or not the sidecar's")
    if meta["vocab_size"] > vocab_size:
        raise InputError(f"{sidecar}: written with a {meta['vocab_size']}-token vocabulary, larger than the "
                         f"config's tokenizer ({vocab_size}); tokenize the data again with data.tokenizer")
    check_made_with(meta, sidecar, tokenizer_fingerprint, eot_token_id)
    tokens = np.memmap(path, dtype=dtype, mode="r") if meta["num_tokens"] else np.zeros(0, dtype)
    return TokenFile(path, tokens, meta)


def check_made_with(meta: dict, source: Path, tokenizer_fingerprint: str, eot_token_id: int) -> None:
    """Refuse pre-tokenized data (described by `meta`, read from `source`) made with another tokenizer."""
    if meta["tokenizer_fingerprint"] != tokenizer_fingerprint or meta["eot_token_id"] != eot_token_id:
        raise InputError(f"{source}: tokenized with tokenizer {meta['tokenizer_fingerprint']} (eot "
                         f"{meta['eot_token_id']}), but data.tokenizer is {tokenizer_fingerprint} (eot {eot_token_id}); "
                         f"point data.tokenizer at the files the data was made with, or make it again")


def _epoch_seed(order_seed: str, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"windows/{order_seed}/{epoch}".encode()).digest()[:8], "little")


class MemmapBatches(BatchSource):
    """`(batch_size, context_length)` batches of windows of a token file, for one rank.

    Same interface as `StreamingBatches` (`diffusionlm.data.batches.Batches`); `loop=False`
    makes one sequential pass and drops the last partial batch.
    """

    def __init__(self, data_config: DataConfig, token_file: TokenFile, *, split: str, context_length: int,
                 batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, loop: bool = True,
                 pin_memory: bool = False) -> None:
        super().__init__(data_config, split=split, context_length=context_length, batch_size=batch_size, rank=rank,
                         world_size=world_size, seed=seed, loop=loop, pin_memory=pin_memory)
        self.file = token_file
        self.shuffled = loop and data_config.memmap_windows == "random"
        self.windows_consumed = 0  # of this rank's windows in this epoch
        self._starts: np.ndarray | None = None

    def _epoch_starts(self) -> np.ndarray:
        """Start offsets of this rank's windows in the current epoch, in reading order."""
        num_tokens, length = len(self.file.tokens), self.context_length
        if self.shuffled:
            rng = np.random.default_rng(_epoch_seed(self.order_seed, self.epoch))
            offset = int(rng.integers(length))
            starts = offset + rng.permutation((num_tokens - offset) // length).astype(np.int64) * length
        else:
            starts = np.arange(num_tokens // length, dtype=np.int64) * length
        starts = starts[self.rank::self.world_size]
        if len(starts) == 0:
            raise InputError(f"{self.file.path}: {num_tokens} tokens make no {length}-token window for rank "
                             f"{self.rank} of {self.world_size}")
        return starts

    def __next__(self) -> torch.Tensor:
        self._check_not_exhausted()
        start_time = time.perf_counter()
        starts: list[np.ndarray] = []
        needed = self.batch_size
        while needed:
            if self._starts is None:
                self._starts = self._epoch_starts()
            taken = self._starts[self.windows_consumed:self.windows_consumed + needed]
            starts.append(taken)
            self.windows_consumed += len(taken)
            needed -= len(taken)
            if needed:
                self._end_epoch()
                self.windows_consumed = 0
                self._starts = None
        tokens = self.file.tokens
        batch = np.stack([tokens[s:s + self.context_length] for s in np.concatenate(starts)])
        return self._counted(torch.from_numpy(batch.astype(np.int64)), start_time)

    def _stream_identity(self) -> dict:
        return {"kind": "memmap", "rank": self.rank, "world_size": self.world_size, "order_seed": self.order_seed,
                "shuffled": self.shuffled, "context_length": self.context_length,
                "num_tokens": int(self.file.meta["num_tokens"])}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "windows_consumed": self.windows_consumed, "exhausted": self._exhausted,
                **self._stream_identity()}

    def load_state_dict(self, state: dict) -> None:
        check_same_stream(state, self._stream_identity())
        self.epoch = int(state["epoch"])
        self.windows_consumed = int(state["windows_consumed"])
        self._exhausted = bool(state["exhausted"])
        self._starts = None

    def metrics(self) -> dict[str, float]:
        return {"tokens_per_s": self._tokens_per_s(), "epoch": float(self.epoch)}

    def provenance(self) -> dict:
        meta = self.file.meta
        return {"dataset_name": "memmap", "split": self.split, "data_files": [str(self.file.path)],
                "num_tokens": meta["num_tokens"], "tokenizer_fingerprint": meta["tokenizer_fingerprint"],
                "source": meta.get("source", {}), "windows": "random" if self.shuffled else "sequential",
                "context_length": self.context_length, "seed": self.seed, "shuffle_seed": self.config.shuffle_seed,
                "rank": self.rank, "world_size": self.world_size}

    def close(self) -> None:
        """Nothing to stop (the map is released with the object)."""
