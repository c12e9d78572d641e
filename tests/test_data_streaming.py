"""Streaming batches over real `datasets` streams of local files and the built-in corpus.

Boundary tests use a byte-level encoder (token = UTF-8 byte, eot = 0) so windows can be
checked by hand; ordering, resume and worker tests use the real GPT-2 tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from config.schemas import DataConfig
from diffusionlm.data.streaming import StreamingBatches

EOT = 0


def byte_encode(text: str) -> list[int]:
    """A real, picklable byte-level encoder: one token per UTF-8 byte (never 0 in our texts)."""
    return list(text.encode("utf-8"))


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts), encoding="utf-8")
    return path


def jsonl_config(path: Path, **overrides) -> DataConfig:
    return DataConfig(dataset_name="json", data_files=str(path), **({"shuffle_buffer_size": 0} | overrides))


def make_batches(config: DataConfig, encode=byte_encode, eot: int = EOT, **kwargs) -> StreamingBatches:
    settings = {"split": "train", "context_length": 4, "batch_size": 2} | kwargs
    return StreamingBatches(config, encode, eot, **settings)


def rows_of(batches) -> list[str]:
    """Texts of a pad-mode byte stream whose sequences each hold one whole row."""
    return [bytes(t for t in seq.tolist() if t != EOT).decode() for batch in batches for seq in batch]


def take(batches: StreamingBatches, n: int) -> list[torch.Tensor]:
    return [next(batches) for _ in range(n)]


ROWS = [f"row {i} " + "x" * (i % 7) for i in range(40)]


@pytest.fixture(scope="module")
def gpt2(request) -> object:
    shared_data = request.getfixturevalue("shared_data")
    from diffusionlm.tokenizer.io import load_tokenizer

    return load_tokenizer(shared_data / "gpt2_vocab.json", shared_data / "gpt2_merges.txt")


def test_pack_cuts_concatenated_rows_into_windows_and_carries_the_rest(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["abc", "de", "fghij"])
    batches = make_batches(jsonl_config(path), loop=False)
    a, b, c, d, e, f, g, h, i, j = b"abcdefghij"
    assert next(batches).tolist() == [[a, b, c, EOT], [d, e, EOT, f]]
    assert batches.state_dict()["carry"].tolist() == [g, h, i, j, EOT]
    assert batches.state_dict()["rows_consumed"] == 3
    with pytest.raises(StopIteration):  # one window left: the partial batch is dropped
        next(batches)


def test_pack_windows_continue_across_the_epoch_boundary(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["abc", "de"])
    batches = make_batches(jsonl_config(path), batch_size=1, loop=True)
    a, b, c, d, e = b"abcde"
    assert [x.tolist() for x in take(batches, 3)] == [[[a, b, c, EOT]], [[d, e, EOT, a]], [[b, c, EOT, d]]]
    assert batches.epoch == 1


def test_pad_truncates_long_rows_and_pads_short_ones_with_eot(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["ab", "abcdefgh", ""])
    batches = make_batches(jsonl_config(path, mode="pad"), context_length=5, batch_size=3, loop=False)
    a, b, c, d, e = b"abcde"
    assert next(batches).tolist() == [[a, b, EOT, EOT, EOT], [a, b, c, d, e], [EOT] * 5]


def test_text_and_parquet_files_stream_the_same_rows_as_jsonl(tmp_path):
    texts = ["one line", "another line", "third"]
    (tmp_path / "d.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": texts}), tmp_path / "d.parquet")
    expected = rows_of(make_batches(jsonl_config(write_jsonl(tmp_path / "d.jsonl", texts), mode="pad"),
                                    context_length=32, batch_size=1, loop=False))
    for loader, name in (("text", "d.txt"), ("parquet", "d.parquet")):
        config = DataConfig(dataset_name=loader, data_files=str(tmp_path / name), mode="pad", shuffle_buffer_size=0)
        assert rows_of(make_batches(config, context_length=32, batch_size=1, loop=False)) == expected == texts


def test_a_directory_of_files_is_a_dataset(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "part0.jsonl", ["a", "b"])
    write_jsonl(tmp_path / "data" / "part1.jsonl", ["c"])
    config = DataConfig(dataset_name=str(tmp_path / "data"), mode="pad", shuffle_buffer_size=0)
    assert sorted(rows_of(make_batches(config, batch_size=1, loop=False))) == ["a", "b", "c"]


def test_same_seeds_give_the_same_stream(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = jsonl_config(path, shuffle_buffer_size=16, shuffle_seed=3)
    assert torch.equal(torch.cat(take(make_batches(config), 20)), torch.cat(take(make_batches(config), 20)))


@pytest.mark.parametrize("change", [{"shuffle_seed": 4}, {"seed": 1}])
def test_a_different_seed_gives_a_different_order(tmp_path, change):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    base = {"shuffle_buffer_size": 16, "shuffle_seed": 3, "mode": "pad"}
    kwargs = {"context_length": 16, "batch_size": 1, "loop": False}
    first = rows_of(make_batches(jsonl_config(path, **base), **kwargs))
    seed = change.get("seed", 0)
    config = jsonl_config(path, **(base | {k: v for k, v in change.items() if k != "seed"}))
    second = rows_of(make_batches(config, seed=seed, **kwargs))
    assert sorted(first) == sorted(second) == sorted(ROWS)
    assert first != second


def test_every_epoch_sees_every_row_once_in_a_new_order(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    batches = make_batches(jsonl_config(path, mode="pad", shuffle_buffer_size=16), context_length=16, batch_size=1)
    epochs = [rows_of(take(batches, len(ROWS))) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(ROWS)
    assert epochs[0] != epochs[1] and epochs[0] != ROWS


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_rows_whose_union_is_a_single_file_dataset(tmp_path, world_size):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = jsonl_config(path, mode="pad", shuffle_buffer_size=8)
    per_rank = [rows_of(make_batches(config, context_length=16, batch_size=1, loop=False, rank=rank,
                                     world_size=world_size)) for rank in range(world_size)]
    seen = [row for rows in per_rank for row in rows]
    assert len(seen) == len(set(seen)) == len(ROWS)
    assert set(seen) == set(ROWS)
    assert max(map(len, per_rank)) - min(map(len, per_rank)) <= 1


def _resumed_stream(make, total: int, resume_after: list[int], tmp_path: Path) -> torch.Tensor:
    """`total` batches, saving to disk and resuming in a fresh loader after each listed batch."""
    batches, produced = make(), []
    for index in range(total):
        produced.append(next(batches))
        if index + 1 in resume_after:
            torch.save(batches.state_dict(), tmp_path / "loader.pt")
            batches.close()
            batches = make()
            batches.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    batches.close()
    return torch.cat(produced)


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_resume_continues_the_exact_stream_mid_epoch_and_across_epochs(tmp_path, gpt2, mode):
    texts = [f"Story {i}: " + "the cat sat on the mat. " * (i % 5 + 1) for i in range(30)]
    path = write_jsonl(tmp_path / "d.jsonl", texts)
    config = jsonl_config(path, mode=mode, shuffle_buffer_size=7)

    def make():
        return make_batches(config, gpt2.encode, gpt2.token_id("<|endoftext|>"), context_length=24, batch_size=2)

    reference = make()
    per_epoch = 0
    while reference.epoch == 0:
        next(reference)
        per_epoch += 1
    total = 3 * per_epoch
    uninterrupted = _resumed_stream(make, total, [], tmp_path)
    # resume points: early, mid-epoch, either side of each epoch boundary, and back to back
    resume_after = [1, per_epoch // 2, per_epoch - 1, per_epoch, per_epoch + 1, 2 * per_epoch, 2 * per_epoch + 1]
    assert torch.equal(_resumed_stream(make, total, resume_after, tmp_path), uninterrupted)


def test_two_tokenizer_workers_give_the_same_stream_as_in_process(gpt2):
    eot = gpt2.token_id("<|endoftext|>")
    streams = []
    for workers in (0, 2):
        batches = make_batches(DataConfig(num_workers=workers, shuffle_buffer_size=64), gpt2.encode, eot,
                               split="validation", context_length=64, batch_size=4)
        streams.append(torch.cat(take(batches, 30)))
        batches.close()
    assert torch.equal(*streams)


def test_resume_with_workers_matches_the_uninterrupted_stream(tmp_path, gpt2):
    config = DataConfig(num_workers=2, shuffle_buffer_size=32)

    def make():
        return make_batches(config, gpt2.encode, gpt2.token_id("<|endoftext|>"), split="validation",
                            context_length=64, batch_size=4)

    assert torch.equal(_resumed_stream(make, 12, [5], tmp_path), _resumed_stream(make, 12, [], tmp_path))


def test_builtin_corpus_streams_the_same_batches_every_time():
    def first_batches():
        return torch.cat(take(make_batches(DataConfig(), split="validation", context_length=32), 10))

    assert torch.equal(first_batches(), first_batches())


def test_builtin_validation_stories_never_appear_in_train():
    from diffusionlm.data.sources import open_source

    validation = {row["text"] for row in open_source(DataConfig(), "validation").dataset}
    train = open_source(DataConfig(), "train").dataset
    assert len(validation) == 512
    assert validation.isdisjoint(row["text"] for row in train)


def test_state_dict_loads_with_weights_only(tmp_path):
    batches = make_batches(DataConfig(), split="validation")
    take(batches, 3)
    torch.save(batches.state_dict(), tmp_path / "loader.pt")
    state = torch.load(tmp_path / "loader.pt", weights_only=True)
    assert state["rows_consumed"] == batches.rows_consumed and torch.equal(state["carry"], batches.state_dict()["carry"])


def test_resuming_under_another_world_size_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    state = make_batches(jsonl_config(path), world_size=2).state_dict()
    from diffusionlm.errors import InputError

    with pytest.raises(InputError, match="world_size was 2"):
        make_batches(jsonl_config(path)).load_state_dict(state)


def test_metrics_report_speed_and_buffer_fill(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    batches = make_batches(jsonl_config(path, shuffle_buffer_size=10))
    take(batches, 5)
    metrics = batches.metrics()
    assert metrics["tokens_per_s"] > 0 and metrics["shuffle_buffer_fill"] == 1.0 and metrics["epoch"] == 0.0
    assert batches.metrics()["tokens_per_s"] == 0.0  # counted since the previous call


def test_provenance_names_the_files_and_a_fingerprint(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    provenance = make_batches(jsonl_config(path), split="train").provenance()
    assert provenance["data_files"] == [str(path)] and provenance["split"] == "train"
    assert provenance["dataset_name"] == "json" and len(provenance["fingerprint"]) == 16
    write_jsonl(path, ROWS[:-1])
    assert make_batches(jsonl_config(path)).provenance()["fingerprint"] != provenance["fingerprint"]
