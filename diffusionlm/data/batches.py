"""The batch sources behind `[data]`, and the one factory that picks the right one.

Every source yields `(batch_size, context_length)` LongTensors for one rank and can save and
restore its exact position, so the trainer, validation and the benchmarks never branch on
where tokens come from:

- `StreamingBatches` (streaming.py): a `datasets` stream of text, tokenized on the fly, or of
  pre-tokenized rows (`token_field`, e.g. parquet shards from diffusionlm-make-data);
- `MemmapBatches` (memmap.py): windows of a `.dat` token file (`dataset_name = "memmap"`).

Pre-tokenized data is checked against the configured tokenizer before the first batch: a
`.dat` through its sidecar, parquet shards through the metadata make-data stores in them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import pyarrow.parquet as pq
import torch

from config.schemas import MEMMAP_DATASET, DataConfig
from diffusionlm.data.memmap import MemmapBatches, check_made_with, open_token_file
from diffusionlm.data.streaming import StreamingBatches
from diffusionlm.errors import InputError
from diffusionlm.tokenizer.tokenizer import Tokenizer

# Key of the JSON make-data stores in each parquet shard's schema metadata.
PARQUET_METADATA_KEY = b"diffusionlm"


class Batches(Protocol):
    """What the training loop and validation need from a batch source."""

    def __iter__(self) -> Batches: ...
    def __next__(self) -> torch.Tensor: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    def metrics(self) -> dict[str, float]: ...
    def provenance(self) -> dict: ...
    def close(self) -> None: ...


def build_batches(config: DataConfig, tokenizer: Tokenizer, eot_token_id: int, *, split: str, context_length: int,
                  batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, loop: bool = True,
                  pin_memory: bool = False) -> Batches:
    """The batch source `config` describes, for `split` on this rank; `pin_memory` for a CUDA run."""
    settings = {"split": split, "context_length": context_length, "batch_size": batch_size, "rank": rank,
                "world_size": world_size, "seed": seed, "loop": loop, "pin_memory": pin_memory}
    if config.dataset_name == MEMMAP_DATASET:
        path = Path(_split_file(config, split))
        token_file = open_token_file(path, tokenizer_fingerprint=tokenizer.fingerprint,
                                     vocab_size=tokenizer.vocab_size, eot_token_id=eot_token_id)
        return MemmapBatches(config, token_file, **settings)
    batches = StreamingBatches(config, tokenizer.encode, eot_token_id, **settings)
    if config.token_field is not None:
        for file in batches.source.provenance["data_files"]:
            _check_parquet_tokenizer(Path(file), tokenizer, eot_token_id)
    return batches


def _split_file(config: DataConfig, split: str) -> str:
    """The .dat file of `split`: `data_files` maps splits to files; a single file is the train split
    (as for `datasets`' own loaders)."""
    files = config.data_files
    if not isinstance(files, dict):
        files = {config.train_split: files}
    if split not in files:
        raise InputError(f"data.data_files: no .dat file for split {split!r} (has {sorted(files)}); name one as "
                         f'{{ {config.train_split} = "...", {split} = "..." }}')
    files = files[split]
    if isinstance(files, list):
        if len(files) != 1:
            raise InputError(f"data.data_files: one .dat file per split for dataset_name = \"memmap\", got {files}")
        files = files[0]
    return files


def _check_parquet_tokenizer(path: Path, tokenizer: Tokenizer, eot_token_id: int) -> None:
    """Refuse parquet shards that make-data wrote with another tokenizer (others pass unchecked)."""
    if path.suffix != ".parquet" or not path.is_file():
        return
    metadata = pq.read_schema(path).metadata or {}
    if PARQUET_METADATA_KEY not in metadata:
        return
    check_made_with(json.loads(metadata[PARQUET_METADATA_KEY]), path, tokenizer.fingerprint, eot_token_id)
