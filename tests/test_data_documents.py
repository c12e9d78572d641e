"""Text files with multi-line documents: `[data].document_separator` through the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from test_data_streaming import _resumed_stream, make_batches, rows_of
from test_train_fixtures import write_tiny_toml

from cli.train import main as train_main
from config.schemas import DataConfig
from diffusionlm.data.documents import group_lines

STORIES = [f"Story {i} begins.\nIt goes on{'.' * (i % 4)}\nThe end of {i}." for i in range(13)]


def text_config(path: Path, separator: str, **overrides) -> DataConfig:
    settings = {"shuffle_buffer_size": 0, "mode": "pad"} | overrides
    return DataConfig(dataset_name="text", data_files=str(path), document_separator=separator, **settings)


def write_stories(path: Path, separator_line: str = "<|endoftext|>") -> Path:
    path.write_text("".join(f"{story}\n{separator_line}\n" for story in STORIES), encoding="utf-8")
    return path


def test_separator_ends_documents_on_its_own_line_or_inside_one():
    lines = ["a\n", "b\n", "<|endoftext|>\n", "c<|endoftext|>d\n", "<|endof", "text|>\n", "\n", "e"]
    assert list(group_lines(lines, "<|endoftext|>")) == ["a\nb", "c", "d", "e"]


def test_blank_lines_end_documents_and_empty_ones_are_skipped():
    lines = ["\n", "a\n", "b\n", "\n", "  \n", "\n", "c\n", "\n"]
    assert list(group_lines(lines, "blank_line")) == ["a\nb", "c"]


def test_line_mode_passes_rows_through():
    assert list(group_lines(["a", "", "b"], "line")) == ["a", "", "b"]


@pytest.mark.parametrize(("separator", "separator_line"), [("<|endoftext|>", "<|endoftext|>"), ("blank_line", "")])
def test_text_file_documents_are_whole_rows_with_their_newlines(tmp_path, separator, separator_line):
    path = write_stories(tmp_path / "stories.txt", separator_line)
    config = text_config(path, separator)
    assert rows_of(make_batches(config, context_length=64, batch_size=1, loop=False)) == STORIES


def test_document_separator_is_refused_for_sources_whose_rows_are_documents():
    with pytest.raises(ValidationError, match="document_separator applies to dataset_name = \"text\" only"):
        DataConfig(dataset_name="json", data_files="x.jsonl", document_separator="<|endoftext|>")


def test_tinystories_valid_streams_one_row_per_story(shared_data):
    path = shared_data / "tinystories_valid.txt"
    stories = [s.strip("\n") for s in path.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    batches = make_batches(text_config(path, "<|endoftext|>"), context_length=8192, batch_size=1, loop=False)
    rows = rows_of(batches)
    assert len(rows) == len(stories) == 1898
    assert rows == stories
    assert sum("\n" in row for row in rows) > len(rows) // 2  # paragraphs stay inside their story
    assert not any("<|endoftext|>" in row for row in rows)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_documents_covering_the_file(tmp_path, world_size):
    config = text_config(write_stories(tmp_path / "stories.txt"), "<|endoftext|>", shuffle_buffer_size=4)
    per_rank = [rows_of(make_batches(config, context_length=64, batch_size=1, loop=False, rank=rank,
                                     world_size=world_size)) for rank in range(world_size)]
    seen = [row for rows in per_rank for row in rows]
    assert sorted(seen) == sorted(STORIES)


def test_resume_continues_the_exact_document_stream(tmp_path):
    config = text_config(write_stories(tmp_path / "stories.txt"), "<|endoftext|>", shuffle_buffer_size=5, mode="pack")

    def make():
        return make_batches(config, context_length=24, batch_size=2)

    uninterrupted = _resumed_stream(make, 40, [], tmp_path)
    assert torch.equal(_resumed_stream(make, 40, [3, 17, 18, 31], tmp_path), uninterrupted)


def test_resuming_under_another_document_separator_is_refused(tmp_path):
    from diffusionlm.errors import InputError

    path = write_stories(tmp_path / "stories.txt")
    state = make_batches(text_config(path, "<|endoftext|>")).state_dict()
    with pytest.raises(InputError, match="document_separator was '<|endoftext|>'"):
        make_batches(text_config(path, "line")).load_state_dict(state)


def test_training_from_a_text_file_of_documents_works(tmp_path, capsys):
    path = write_stories(tmp_path / "stories.txt")
    data = {"dataset_name": "text", "data_files": {"train": str(path), "validation": str(path)},
            "document_separator": "<|endoftext|>"}
    config = write_tiny_toml(tmp_path / "docs.toml", tmp_path / "runs", data=data,
                             training={"max_train_iteration": 6, "val_freq_iteration": 6, "ckpting_save_iter": 6})
    assert train_main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert '"data.provenance.document_separator": "<|endoftext|>"' in out
    assert "metrics.val_loss" in out
    assert (tmp_path / "runs" / "tiny" / "export" / "model.safetensors").is_file()
