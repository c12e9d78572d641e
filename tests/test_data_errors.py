"""Bad data and unreachable sources: one clear InputError naming the dataset, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_data_streaming import jsonl_config, make_batches, write_jsonl

from config.schemas import DataConfig
from diffusionlm.errors import InputError


def first_batch(config: DataConfig, **kwargs):
    return next(make_batches(config, **kwargs))


def test_invalid_utf8_in_a_text_file_names_the_dataset(tmp_path):
    (tmp_path / "d.txt").write_bytes(b"fine line\n\xff\xfe broken\n")
    with pytest.raises(InputError, match=r"text\[train\].*not valid UTF-8"):
        first_batch(DataConfig(dataset_name="text", data_files=str(tmp_path / "d.txt")), context_length=64)


def test_a_row_without_the_text_field_names_the_field(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "hello"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"no field 'text' \(fields: \['body'\]\)"):
        first_batch(jsonl_config(tmp_path / "d.jsonl"))


@pytest.mark.parametrize("value", ["5", "null", '["a"]'])
def test_a_non_string_text_field_is_an_error(tmp_path, value):
    (tmp_path / "d.jsonl").write_text(f'{{"text": "ok"}}\n{{"text": {value}}}\n', encoding="utf-8")
    with pytest.raises(InputError, match="field 'text' holds"):
        first_batch(jsonl_config(tmp_path / "d.jsonl"), context_length=64)


def test_malformed_json_is_an_error(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(InputError, match="cannot read rows"):
        first_batch(jsonl_config(tmp_path / "d.jsonl"), context_length=64)


@pytest.mark.parametrize("name, content", [("d.jsonl", ""), ("d.txt", "")])
def test_an_empty_dataset_fails_instead_of_looping_forever(tmp_path, name, content):
    (tmp_path / name).write_text(content, encoding="utf-8")
    config = DataConfig(dataset_name="json" if name.endswith("jsonl") else "text", data_files=str(tmp_path / name))
    with pytest.raises(InputError, match="no rows"):
        first_batch(config, loop=True)


def test_json_data_files_matching_no_file_names_the_field_and_the_pattern(tmp_path):
    pattern = str(tmp_path / "missing" / "*.jsonl")
    with pytest.raises(InputError) as err:
        first_batch(DataConfig(dataset_name="json", data_files=pattern))
    assert f'data.data_files = "{pattern}"' in str(err.value) and "no file matches" in str(err.value)


def test_a_rank_left_without_rows_after_sharding_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["only one row"])
    with pytest.raises(InputError, match="no rows for rank 1 of 2"):
        first_batch(jsonl_config(path), rank=1, world_size=2)


def test_a_missing_data_file_is_an_error(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl"):
        make_batches(jsonl_config(tmp_path / "nope.jsonl"))


def test_a_packaged_loader_without_data_files_is_an_error():
    with pytest.raises(InputError, match="needs data_files"):
        make_batches(DataConfig(dataset_name="json"))


def test_an_unknown_split_is_an_error(tmp_path):
    with pytest.raises(InputError, match="splits"):
        make_batches(DataConfig(), split="test")
    with pytest.raises(InputError, match="Bad split"):
        make_batches(jsonl_config(write_jsonl(tmp_path / "d.jsonl", ["a"])), split="validation")


def test_a_hub_dataset_without_network_fails_fast_with_one_line():
    # An endpoint on a closed local port stands in for "no network", whatever this machine has.
    # The clock runs inside the child around the open alone, so a slow interpreter start-up on a
    # busy machine does not count: what is checked is that no retry loop outlasts hub_timeout_s.
    code = (
        "import time\n"
        "from config.schemas import DataConfig\n"
        "from diffusionlm.data.streaming import StreamingBatches\n"
        "from diffusionlm.errors import InputError\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    StreamingBatches(DataConfig(dataset_name='roneneldan/TinyStories', hub_timeout_s=2), list, 0,\n"
        "                     split='train', context_length=8, batch_size=1)\n"
        "except InputError as err:\n"
        "    print(err)\n"
        "print(time.monotonic() - start)\n"
    )
    env = os.environ | {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    *lines, elapsed = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Hugging Face Hub" in lines[0] and "HF_DATASETS_OFFLINE=1" in lines[0]
    assert float(elapsed) < 30  # hub_timeout_s = 2; a retrying client would take minutes
