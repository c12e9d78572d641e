"""Tokenizer files: GPT-2's format written and read back, and every malformed file named in the error."""

from __future__ import annotations

import json

import pytest

from diffusionlm.errors import InputError
from diffusionlm.tokenizer import io
from diffusionlm.tokenizer.bpe_trainer import train_bpe
from diffusionlm.tokenizer.io import load_tokenizer, save_tokenizer
from diffusionlm.tokenizer.tokenizer import Tokenizer

SPECIALS = ["<|endoftext|>", "<|mask|>"]
TEXT = "The cat sat on the mat.\nThe dog didn't, naïve café!<|endoftext|>" * 10


@pytest.fixture()
def saved(tmp_path):
    """A trained tokenizer written to tmp_path; returns (folder, tokenizer)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    vocab, merges = train_bpe(corpus, 300, SPECIALS)
    tokenizer = Tokenizer(vocab, merges, SPECIALS)
    save_tokenizer(tmp_path / "tok", vocab, merges, tokenizer.special_tokens)
    return tmp_path / "tok", tokenizer


def _load(folder):
    return load_tokenizer(folder / "vocab.json", folder / "merges.txt", folder / "special_tokens.json")


def test_saved_files_load_back_to_the_same_tokenizer(saved):
    folder, tokenizer = saved
    loaded = _load(folder)
    assert loaded.vocab == tokenizer.vocab and loaded.merges == tokenizer.merges
    assert loaded.special_tokens == {"<|endoftext|>": loaded.vocab_size - 2, "<|mask|>": loaded.vocab_size - 1}
    assert loaded.encode(TEXT) == tokenizer.encode(TEXT)


def test_files_use_gpt2_printable_byte_encoding(saved):
    folder, tokenizer = saved
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and "Ġ c" in merges
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["Ġ"] == 32 and vocab["Ġcat"] == tokenizer.token_id(" cat") and vocab["<|mask|>"] == len(vocab) - 1
    specials = json.loads((folder / "special_tokens.json").read_text(encoding="utf-8"))
    assert specials == {"<|endoftext|>": len(vocab) - 2, "<|mask|>": len(vocab) - 1}


def test_builtin_tokenizer_loads_with_its_special_tokens():
    tokenizer = load_tokenizer()
    assert tokenizer.special_tokens == {"<|endoftext|>": tokenizer.vocab_size - 2, "<|mask|>": tokenizer.vocab_size - 1}
    text = "Once upon a time, a little bird found a red ball."
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_missing_builtin_tokenizer_says_how_to_regenerate_it(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "builtin_tokenizer_dir", lambda: tmp_path)
    with pytest.raises(InputError, match="diffusionlm-train-tokenizer --set output_dir=diffusionlm/data/tokenizer"):
        load_tokenizer()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("vocab.json", '{"a": 0,', r"vocab.json: line 1: invalid JSON"),
        ("vocab.json", '["a"]', r"vocab.json: expected a JSON object"),
        ("vocab.json", '{"a": "zero"}', r"vocab.json: token 'a' has id 'zero'"),
        ("vocab.json", '{"a": 0, "b": 2}', r"vocab.json: ids must be 0..1 with no gaps"),
        ("vocab.json", '{"a b": 0}', r"vocab.json: token 'a b' is not in GPT-2's printable byte encoding"),
        ("merges.txt", "#version: 0.2\nh e\nh e x\n", r"merges.txt: line 3: expected two tokens"),
        ("merges.txt", "h e\nq zz\n", r"merges.txt: line 2: token 'zz' is not in the vocabulary"),
        ("special_tokens.json", '{"<|mask|>": 5}', r"special_tokens.json: '<\|mask\|>' has id 5, which the vocabulary uses"),
        ("special_tokens.json", '{"<|x|>": 300, "<|y|>": 300}', r"special_tokens.json: '<\|y\|>' and '<\|x\|>' both have id 300"),
        ("special_tokens.json", '{"<|x|>": 305}', r"special_tokens.json: '<\|x\|>' has id 305, leaving a gap"),
        ("special_tokens.json", "{oops", r"special_tokens.json: line 1: invalid JSON"),
    ],
)
def test_malformed_file_is_input_error_naming_file_and_problem(saved, name, content, message):
    folder, _ = saved
    (folder / name).write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        _load(folder)


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt", "special_tokens.json"])
def test_missing_file_is_input_error_naming_it(saved, name):
    folder, _ = saved
    (folder / name).unlink()
    with pytest.raises(InputError, match=rf"{name}: .* file not found"):
        _load(folder)


def test_vocab_without_merges_path_is_input_error(saved):
    folder, _ = saved
    with pytest.raises(InputError, match="vocab_path and merges_path must be given together"):
        load_tokenizer(folder / "vocab.json")
