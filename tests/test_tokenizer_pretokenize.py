"""Pre-tokenization: GPT-2's split, and special tokens kept whole."""

from __future__ import annotations

from diffusionlm.tokenizer.pretokenize import count_pretokens, find_pretokens, special_token_regex, split_special_tokens


def pretokenize(text: str, special_regex=None) -> list[str]:
    """Every pre-token of `text` in order, special tokens kept whole, as the encoder sees them."""
    return [token for piece, is_special in split_special_tokens(text, special_regex)
            for token in ([piece] if is_special else find_pretokens(piece))]


def test_gpt2_split_keeps_leading_space_and_contractions():
    assert pretokenize("I'm here,  they've 42 cats!") == ["I", "'m", " here", ",", " ", " they", "'ve", " 42", " cats", "!"]


def test_whitespace_run_leaves_its_last_space_to_the_next_word():
    assert pretokenize("a   b\n\nc") == ["a", "  ", " b", "\n", "\n", "c"]


def test_special_token_is_one_piece_and_not_merged_with_neighbours():
    specials = special_token_regex(["<|endoftext|>"])
    assert pretokenize("end.<|endoftext|> Next", specials) == ["end", ".", "<|endoftext|>", " Next"]


def test_overlapping_special_tokens_match_longest_first():
    specials = special_token_regex(["<|a|>", "<|a|><|a|>"])
    assert pretokenize("x<|a|><|a|><|a|>", specials) == ["x", "<|a|><|a|>", "<|a|>"]


def test_count_pretokens_drops_special_tokens():
    counts = count_pretokens("hi<|endoftext|>hi", special_token_regex(["<|endoftext|>"]))
    assert counts == {"hi": 2}


def test_no_special_tokens_means_no_special_regex():
    assert special_token_regex([]) is None
    assert pretokenize("<|endoftext|>") == ["<|", "endoftext", "|>"]
