"""Encoding and decoding: GPT-2 files give tiktoken's ids, round trips are exact, streams stay lazy."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusionlm.errors import InputError
from diffusionlm.tokenizer.bpe_trainer import train_bpe
from diffusionlm.tokenizer.io import load_tokenizer
from diffusionlm.tokenizer.pretokenize import GPT2_REGEX, find_pretokens
from diffusionlm.tokenizer.tokenizer import Tokenizer

EOT = "<|endoftext|>"
TRICKY = ["", " ", "  ", "\n", "\n\n", "\t", "'s", "'ll", "'", "s", "hello", " world", "1", "23", "é", "🙂",
          "東京", "!", "?!", "\r\n", EOT, "<|mask|>", "<|", "|>", "\u00a0", "\u200b", "a\u0301"]

# Long stretches of common characters broken by uncommon ones (CJK, emoji, U+3000 space, Devanagari),
# so that `find_pretokens` switches between its two engines at every kind of boundary.
COMMON_STRETCH = st.lists(st.sampled_from(["the", " cat", "  ", " ", "\n", "\n\n", "\t", "'s", "42", "?!", " é",
                                           "\u2019", "\u201c", "\u00a0", "\u2028", "\u2160", "\u00b2", "\x1c"]),
                          min_size=50, max_size=200).map("".join)
UNCOMMON = st.sampled_from(["東京", "🙂", "\u3000", "\u0915", " 東", "🙂 "])
ENGINE_SWITCHING = st.lists(COMMON_STRETCH | UNCOMMON, max_size=12).map("".join)

SMALL_WORDS = ["The", " cat", " sat", " on", " the", " mat", ".", " dog", " didn", "'t", "ca", "t "]


@pytest.fixture(scope="module")
def gpt2(shared_data) -> Tokenizer:
    return load_tokenizer(shared_data / "gpt2_vocab.json", shared_data / "gpt2_merges.txt", special_tokens=[EOT])


@pytest.fixture(scope="module")
def tiktoken_gpt2(shared_data):
    pytest.importorskip("tiktoken")
    from benchmarking.bench_tokenizer import tiktoken_gpt2

    return tiktoken_gpt2(shared_data / "gpt2_vocab.json")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Tokenizer:
    """A tokenizer trained here on a little English, with both special tokens."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(("The cat sat on the mat. The dog didn't. " * 20 + EOT) * 5, encoding="utf-8")
    vocab, merges = train_bpe(path, 300, [EOT, "<|mask|>"])
    return Tokenizer(vocab, merges, [EOT, "<|mask|>"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, limit",
    [("english_general.txt", 1_500_000), ("tinystories_valid.txt", None), ("wikitext2_test.txt", None),
     ("german.txt", None), ("address.txt", None)],
)
def test_gpt2_files_encode_like_tiktoken(gpt2, tiktoken_gpt2, shared_data, name, limit):
    text = (shared_data / name).read_text(encoding="utf-8")[:limit]
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


# Code points that Python's Unicode tables call unassigned (Cn) or private-use (Co) are left out:
# the `regex` module and tiktoken's Rust regex ship different Unicode versions, so they may class
# such a character differently (a letter in one, "other" in the other), a difference in Unicode
# data rather than in tokenization.
ASSIGNED_CHARS = st.characters(exclude_categories=("Cs", "Cn", "Co"))


@settings(max_examples=1500, deadline=None)
@given(st.text(ASSIGNED_CHARS))
def test_any_unicode_encodes_like_tiktoken_and_round_trips(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(ids) == text


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(TRICKY) | st.text(ASSIGNED_CHARS, max_size=4), max_size=30).map("".join))
def test_boundary_heavy_text_encodes_like_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


@settings(max_examples=200, deadline=None)
@given(ENGINE_SWITCHING)
def test_find_pretokens_matches_the_gpt2_regex_across_engine_switches(text):
    assert find_pretokens(text) == GPT2_REGEX.findall(text)


@settings(max_examples=100, deadline=None)
@given(ENGINE_SWITCHING)
def test_engine_switching_text_encodes_like_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_endoftext_keeps_its_id_and_a_new_special_is_appended(shared_data):
    tokenizer = load_tokenizer(shared_data / "gpt2_vocab.json", shared_data / "gpt2_merges.txt", special_tokens=[EOT, "<|mask|>"])
    assert tokenizer.special_tokens == {EOT: 50256, "<|mask|>": 50257}
    assert tokenizer.vocab_size == 50258
    assert tokenizer.encode("a<|mask|>" + EOT) == [64, 50257, 50256]
    assert tokenizer.token_id(" the") == 262


def test_special_tokens_encode_to_one_id_and_round_trip(small):
    text = f"The cat{EOT}<|mask|> sat"
    ids = small.encode(text)
    assert ids.count(small.token_id(EOT)) == 1 and ids.count(small.token_id("<|mask|>")) == 1
    assert small.decode(ids) == text


def test_overlapping_special_tokens_prefer_the_longest(small):
    tokenizer = Tokenizer(small.vocab, small.merges, [EOT, EOT + EOT])
    assert tokenizer.encode(EOT * 3) == [tokenizer.token_id(EOT + EOT), tokenizer.token_id(EOT)]


def test_token_id_of_a_string_that_is_not_one_token_is_input_error(small):
    with pytest.raises(InputError, match=re.escape("'<|nope|>' is not a single token")):
        small.token_id("<|nope|>")


def test_decode_replaces_invalid_utf8(small):
    assert small.decode([0xE2, 0x82]) == "\ufffd"


def test_decode_unknown_id_is_a_clear_error_or_skipped(small):
    with pytest.raises(InputError, match="token id 99999"):
        small.decode([65, 99999])
    assert small.decode([65, 99999], skip_unknown=True) == "A"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TRICKY + SMALL_WORDS) | st.text(max_size=6), max_size=60), st.data())
def test_encode_iterable_equals_encode_of_the_concatenation(small, pieces, data):
    chunks = [piece for piece in pieces if piece]
    buffer_chars = data.draw(st.integers(1, 40))  # small, so short streams are cut many times
    assert list(small.encode_iterable(chunks, buffer_chars)) == small.encode("".join(chunks))


def test_encode_iterable_never_cuts_inside_a_special_token_with_spaces(small):
    tokenizer = Tokenizer(small.vocab, small.merges, ["<|end of text|>"])
    text = "The cat<|end of text|> sat. <|end of text|>\n" * 20
    assert list(tokenizer.encode_iterable(text, buffer_chars=5)) == tokenizer.encode(text)


def test_encode_iterable_equals_encode_on_a_real_file(gpt2, shared_data):
    text = (shared_data / "tinystories_valid.txt").read_text(encoding="utf-8")[:300_000]
    lines = text.splitlines(keepends=True)
    assert list(gpt2.encode_iterable(lines, buffer_chars=1000)) == gpt2.encode(text)


def test_encode_iterable_yields_before_the_stream_ends(small):
    consumed = 0

    def endless_lines():
        nonlocal consumed
        for i in itertools.count():
            consumed += 1
            yield f"The cat sat on mat number {i}.{EOT}\n"

    first_ids = list(itertools.islice(small.encode_iterable(endless_lines()), 1000))
    assert len(first_ids) == 1000
    assert consumed < 10_000  # a few buffers' worth, not the (endless) stream


def test_count_text_bytes_counts_the_original_text_and_no_special_token(gpt2):
    text = "Once upon a time, a café.<|endoftext|>The end."
    ids = gpt2.encode(text)
    assert gpt2.count_text_bytes(ids) == len(text.replace("<|endoftext|>", "").encode("utf-8"))
