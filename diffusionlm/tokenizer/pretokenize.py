"""Pre-tokenization: cut text into the pieces BPE merges inside of, and special tokens.

BPE never merges across a pre-token boundary, so this split decides which tokens can exist.
We use GPT-2's regex (contractions, letter runs, digit runs, punctuation runs, whitespace),
each optionally led by one space, so " the" is a unit. Special tokens are cut out first and
are never split or merged with their neighbours; when two of them overlap (`<|a|>` and
`<|a|><|b|>`) the longest match wins, which is what a user who declared the longer one means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import regex

# GPT-2's pattern, as published with its encoder. `\s+(?!\S)` leaves the last space of a
# whitespace run to lead the following word.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_REGEX = regex.compile(GPT2_PATTERN)


def special_token_regex(special_tokens: Iterable[str]) -> regex.Pattern | None:
    """A regex matching any special token, longest first; None when there are none."""
    tokens = sorted(set(special_tokens), key=len, reverse=True)
    if not tokens:
        return None
    return regex.compile("|".join(regex.escape(token) for token in tokens))


def split_special_tokens(text: str, special_regex: regex.Pattern | None) -> Iterator[tuple[str, bool]]:
    """Yield `(piece, is_special)` in order: ordinary text between special tokens, and the tokens.

    Empty ordinary pieces are skipped.
    """
    if special_regex is None:
        if text:
            yield text, False
        return
    start = 0
    for match in special_regex.finditer(text):
        if match.start() > start:
            yield text[start : match.start()], False
        yield match.group(), True
        start = match.end()
    if start < len(text):
        yield text[start:], False


def pretokenize(text: str, special_regex: regex.Pattern | None = None) -> list[str]:
    """All pre-tokens of `text`, special tokens kept whole (handy for tests and inspection)."""
    pieces: list[str] = []
    for piece, is_special in split_special_tokens(text, special_regex):
        if is_special:
            pieces.append(piece)
        else:
            pieces.extend(GPT2_REGEX.findall(piece))
    return pieces


def count_pretokens(text: str, special_regex: regex.Pattern | None) -> Counter[str]:
    """How often each ordinary pre-token occurs; special tokens are dropped (they are never merged)."""
    counts: Counter[str] = Counter()
    for piece, is_special in split_special_tokens(text, special_regex):
        if not is_special:
            counts.update(GPT2_REGEX.findall(piece))
    return counts
