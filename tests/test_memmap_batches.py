"""Windows of a `.dat` token file: disjoint across ranks, reshuffled per epoch, exactly resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_data_streaming import _resumed_stream

from config.schemas import DataConfig
from databuilder.memmap_writer import MemmapWriter
from diffusionlm.data.memmap import MemmapBatches, open_token_file

CONTEXT = 4
NUM_TOKENS = 4 * 30 + 3  # 30 windows and a tail


def write_token_file(path: Path) -> Path:
    writer = MemmapWriter(path, vocab_size=1000)
    for start in range(0, NUM_TOKENS, 10):
        writer.add(list(range(start, min(start + 10, NUM_TOKENS))))
    writer.finish({"tokenizer_fingerprint": "t", "vocab_size": 1000, "eot_token_id": 9})
    return path


@pytest.fixture
def token_file(tmp_path):
    return open_token_file(write_token_file(tmp_path / "d.dat"), tokenizer_fingerprint="t", vocab_size=1000,
                           eot_token_id=9)


def make(token_file, windows="random", **kwargs) -> MemmapBatches:
    settings = {"split": "train", "context_length": CONTEXT, "batch_size": 2} | kwargs
    return MemmapBatches(DataConfig(dataset_name="memmap", data_files="d.dat", memmap_windows=windows), token_file,
                         **settings)


def windows_of(batches) -> list[tuple[int, ...]]:
    return [tuple(row) for batch in batches for row in batch.tolist()]


def test_sequential_validation_pass_reads_windows_in_file_order_and_drops_the_partial_batch(token_file):
    windows = windows_of(make(token_file, loop=False, batch_size=4))
    assert windows == [tuple(range(s, s + CONTEXT)) for s in range(0, 28 * CONTEXT, CONTEXT)]


def test_random_windows_cover_the_file_once_per_epoch_in_a_new_order(token_file):
    batches = make(token_file, batch_size=1)
    first = windows_of(next(batches) for _ in range(30))
    assert len(set(first)) == 30 and all(w == tuple(range(w[0], w[0] + CONTEXT)) for w in first)
    second = windows_of(next(batches) for _ in range(29))  # the shifted epoch has one window less
    assert batches.epoch == 1 and first != second


def first_epoch(batches: MemmapBatches) -> list[tuple[int, ...]]:
    windows = []
    while True:
        batch = next(batches)
        if batches.epoch > 0:
            return windows
        windows += windows_of([batch])


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("windows", ["random", "sequential"])
def test_ranks_read_disjoint_windows_covering_the_epoch(token_file, world_size, windows):
    per_rank = [first_epoch(make(token_file, windows, batch_size=1, rank=rank, world_size=world_size))
                for rank in range(world_size)]
    seen = [w for rank_windows in per_rank for w in rank_windows]
    assert len(seen) == len(set(seen)) == 30


def test_resume_continues_the_exact_stream_across_epochs(tmp_path, token_file):
    uninterrupted = _resumed_stream(lambda: make(token_file), 40, [], tmp_path)
    assert torch.equal(_resumed_stream(lambda: make(token_file), 40, [1, 14, 15, 16, 29], tmp_path), uninterrupted)


def test_resuming_under_another_world_size_is_refused(token_file):
    from diffusionlm.errors import InputError

    with pytest.raises(InputError, match="world_size was 2"):
        make(token_file).load_state_dict(make(token_file, world_size=2).state_dict())
