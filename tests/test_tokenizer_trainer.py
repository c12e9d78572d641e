"""BPE training: the merges equal a slow reference trainer's, and the vocabulary layout holds."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusionlm.errors import InputError
from diffusionlm.tokenizer import bpe_trainer
from diffusionlm.tokenizer.bpe_trainer import boundary_pattern, find_chunk_boundaries, heldout_offset, train_bpe

GPT2_SPLIT = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def reference_train(text: str, vocab_size: int, special_tokens: list[str]) -> list[tuple[bytes, bytes]]:
    """Obviously-correct BPE: recount every pair before each merge; ties go to the greatest pair."""
    pieces = regex.split("|".join(map(regex.escape, special_tokens)), text) if special_tokens else [text]
    words = Counter(tuple(bytes([b]) for b in token.encode()) for piece in pieces for token in GPT2_SPLIT.findall(piece))
    merges = []
    while 256 + len(merges) + len(special_tokens) < vocab_size:
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged_words = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words
    return merges


CORPORA = {
    "ties": "ab ab cd cd ef ef ab cd ef gh gh gh",
    "repeated_letters": "aaaa aaa aa a bbbb aaaaaa baaab",
    "special_boundaries": "low<|endoftext|>lower<|endoftext|>lowest newest<|endoftext|>widest<|mask|>low",
    "unicode": "naïve café über straße — “quoted” 東京 東京 emoji 🙂🙂 1234 12",
    "sentences": "the cat sat on the mat. the dog sat on the log! isn't it? they'll see.\n\n  spaced   out\n" * 3,
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_merges_equal_reference_trainer(tmp_path, name):
    specials = ["<|endoftext|>", "<|mask|>"]
    path = tmp_path / "corpus.txt"
    path.write_text(CORPORA[name], encoding="utf-8")
    vocab, merges = train_bpe(path, 256 + 40 + len(specials), specials)
    assert merges == reference_train(CORPORA[name], 256 + 40 + len(specials), specials)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["a", "b", "ab", " ", "  ", "\n", "ba", "é", "<|endoftext|>", "'s"]), min_size=1, max_size=40).map("".join))
def test_merges_equal_reference_on_generated_corpora(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    vocab, merges = train_bpe(path, 256 + 12 + 1, ["<|endoftext|>"])
    assert merges == reference_train(text, 256 + 12 + 1, ["<|endoftext|>"])
    assert sorted(vocab) == list(range(len(vocab)))


def test_merges_equal_reference_on_real_text(shared_data):
    text = (shared_data / "tinystories_sample.txt").read_text(encoding="utf-8")
    vocab, merges = train_bpe(shared_data / "tinystories_sample.txt", 256 + 120 + 1, ["<|endoftext|>"])
    assert merges == reference_train(text, 256 + 120 + 1, ["<|endoftext|>"])


def test_vocab_is_bytes_then_merges_then_specials_without_gaps(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(CORPORA.values()), encoding="utf-8")
    vocab, merges = train_bpe(path, 300, ["<|endoftext|>", "<|mask|>"])
    assert sorted(vocab) == list(range(300))
    assert [vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]
    assert [vocab[256 + i] for i in range(len(merges))] == [a + b for a, b in merges]
    assert (vocab[298], vocab[299]) == (b"<|endoftext|>", b"<|mask|>")


def test_training_without_special_tokens(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPORA["sentences"], encoding="utf-8")
    vocab, merges = train_bpe(path, 280, [])
    assert len(vocab) == 280 and merges == reference_train(CORPORA["sentences"], 280, [])


def test_special_token_text_is_never_merged(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("<|endoftext|>" * 50 + "x", encoding="utf-8")
    vocab, merges = train_bpe(path, 270, ["<|endoftext|>"])
    assert merges == []
    assert len(vocab) == 257


@pytest.mark.parametrize("specials", [["<|endoftext|>", "<|mask|>"], []])
def test_parallel_chunks_give_the_same_merges(tmp_path, monkeypatch, specials):
    path = tmp_path / "corpus.txt"
    path.write_text("<|endoftext|>".join(CORPORA[name] for name in sorted(CORPORA)) * 20, encoding="utf-8")
    expected = train_bpe(path, 330, specials, num_processes=1)
    monkeypatch.setattr(bpe_trainer, "PARALLEL_MIN_BYTES", 0)
    assert train_bpe(path, 330, specials, num_processes=2) == expected


def _is_safe_cut(data: bytes, cut: int) -> bool:
    return data.startswith(b"<|endoftext|>", cut) or (data[cut - 1:cut] not in b" \n" and data[cut:cut + 1] in b" \n")


def test_chunk_boundaries_fall_on_special_tokens_or_after_a_word(tmp_path):
    path = tmp_path / "corpus.txt"
    data = "<|endoftext|>".join(f"story {i} " * (i + 1) for i in range(200)).encode()
    path.write_bytes(data)
    boundaries = find_chunk_boundaries(path, 8, boundary_pattern(["<|endoftext|>"]), len(data))
    assert boundaries[0] == 0 and boundaries[-1] == len(data) and len(boundaries) > 2
    assert all(_is_safe_cut(data, cut) for cut in boundaries[1:-1])


def test_a_file_without_its_special_tokens_is_still_cut_into_chunks(tmp_path):
    path = tmp_path / "corpus.txt"
    data = ("plain words and no separators\n" * 2000).encode()
    path.write_bytes(data)
    boundaries = find_chunk_boundaries(path, 8, boundary_pattern(["<|endoftext|>", "<|mask|>"]), len(data))
    assert len(boundaries) == 9 and all(_is_safe_cut(data, cut) for cut in boundaries[1:-1])


def test_special_tokens_holding_whitespace_are_the_only_cut_points():
    assert boundary_pattern(["<|end of text|>"]).pattern == re.escape("<|end of text|>".encode())


def test_chunk_boundaries_without_special_tokens_fall_after_a_word(tmp_path):
    path = tmp_path / "corpus.txt"
    data = ("  spaced   words,\n\n" * 2000).encode()
    path.write_bytes(data)
    boundaries = find_chunk_boundaries(path, 8, boundary_pattern([]), len(data))
    assert len(boundaries) > 2
    assert all(data[cut - 1 : cut] not in b" \n" and data[cut : cut + 1] in b" \n" for cut in boundaries[1:-1])


def test_heldout_offset_cuts_after_a_newline(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\nsecond line\nthird line\n", encoding="utf-8")
    assert heldout_offset(path, len("third line\n")) == len("first line\nsecond line\n")
    assert heldout_offset(path, len("third line\n") + 1) == len("first line\n")
    assert heldout_offset(path, 0) == path.stat().st_size


def test_vocab_size_below_bytes_plus_specials_is_input_error(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match="at least 256 bytes"):
        train_bpe(path, 257, ["<|endoftext|>", "<|mask|>"])


def test_missing_input_is_input_error_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="nope.txt: input file not found"):
        train_bpe(tmp_path / "nope.txt", 300, [])


def test_empty_input_is_input_error(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(InputError, match="empty.txt: input file is empty"):
        train_bpe(tmp_path / "empty.txt", 300, [])


def test_invalid_utf8_input_is_input_error_naming_the_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ok".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt: not valid UTF-8 .* byte 3"):
        train_bpe(path, 300, [])


def test_trainer_module_does_not_import_torch():
    code = "import sys, diffusionlm.tokenizer.bpe_trainer; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
