"""What a client reads of a sequence: only final text, stop strings across chunks, whole UTF-8."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from diffusionlm.serving.text_stream import CompletionText

# A toy byte-level vocabulary: "é" is two bytes, split over tokens 3 and 4.
VOCAB = {0: b"a", 1: b"b", 2: b"STOP", 3: b"\xc3", 4: b"\xa9", 5: b" ", 6: b"<|endoftext|>"}
EOS = 6


def stream(chunks: list[list[int]], **kwargs) -> tuple[list[str], CompletionText]:
    text = CompletionText(VOCAB, **kwargs)
    pieces = [text.feed(chunk) for chunk in chunks]
    pieces.append(text.finish())
    return pieces, text


def test_a_character_split_across_tokens_is_held_back_until_complete():
    pieces, text = stream([[0, 3], [4, 1]])
    assert pieces == ["a", "éb", ""]
    assert text.finish_reason == "length"


def test_an_incomplete_character_at_the_end_becomes_a_replacement_character():
    assert stream([[0, 3]])[0] == ["a", "\ufffd"]


def test_a_stop_string_spanning_two_chunks_ends_the_text_before_it():
    pieces, text = stream([[0, 5, 0], [1, 1, 0]], stop=["ab", "zz"])
    assert "".join(pieces) == "a "
    assert pieces[0] == "a "  # the trailing "a" could start "ab": held back, then cut
    assert text.finish_reason == "stop"


def test_held_back_text_that_is_not_a_stop_string_is_released():
    pieces, _ = stream([[0], [0]], stop=["ab"])
    assert pieces == ["", "a", "a"]


def test_eos_ends_the_text_and_later_tokens_are_ignored():
    pieces, text = stream([[0, EOS, 1], [1]], eos_id=EOS)
    assert pieces == ["a", "", ""]
    assert text.finish_reason == "stop" and text.tokens == 2


def test_without_an_eos_id_the_end_of_text_token_is_ordinary_text():
    assert "".join(stream([[0, EOS]])[0]) == "a<|endoftext|>"


def test_the_earliest_of_several_stop_strings_wins():
    assert "".join(stream([[0, 2, 1, 0]], stop=["ba", "STOP"])[0]) == "a"


@given(st.lists(st.sampled_from(sorted(VOCAB)), max_size=30), st.lists(st.integers(1, 5), max_size=30),
       st.lists(st.sampled_from(["a", "ab", "b a", "é", "STOPb", "\ufffd"]), max_size=3))
def test_the_text_does_not_depend_on_how_the_tokens_are_chunked(tokens, cuts, stops):
    chunks, at = [], 0
    for size in cuts:
        chunks.append(tokens[at:at + size])
        at += size
    chunks.append(tokens[at:])
    whole, whole_state = stream([tokens], stop=stops, eos_id=EOS)
    pieces, state = stream(chunks, stop=stops, eos_id=EOS)
    assert "".join(pieces) == "".join(whole)
    assert state.finish_reason == whole_state.finish_reason
