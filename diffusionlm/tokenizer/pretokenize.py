"""Pre-tokenization: cut text into the pieces BPE merges inside of, and special tokens.

BPE never merges across a pre-token boundary, so this split decides which tokens can exist.
We use GPT-2's regex (contractions, letter runs, digit runs, punctuation runs, whitespace),
each optionally led by one space, so " the" is a unit. Special tokens are cut out first and
are never split or merged with their neighbours; when two of them overlap (`<|a|>` and
`<|a|><|b|>`) the longest match wins, which is what a user who declared the longer one means.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

import regex

# GPT-2's pattern, as published with its encoder. `\s+(?!\S)` leaves the last space of a
# whitespace run to lead the following word.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_REGEX = regex.compile(GPT2_PATTERN)

# The scripts and symbols most text is written in. On these characters GPT-2's pattern is
# rewritten for the stdlib `re` engine with each class (`\s`, `\p{L}`, `\p{N}`, the rest) spelled
# out as the characters `regex` itself puts in it, which `re` runs about twice as fast as `regex`
# runs the original; pre-tokenizing is most of a cold encode. Characters outside these ranges
# (CJK, emoji, ...) and the words around them still go through `GPT2_REGEX`.
_COMMON_RANGES = ((0x0000, 0x052F), (0x2000, 0x2BFF))  # Latin, Greek, Cyrillic; punctuation, symbols
_COMMON_CHARS = "".join(chr(code) for low, high in _COMMON_RANGES for code in range(low, high + 1))


def _char_class(pattern: str) -> str:
    """The common characters `regex` matches with `pattern`, as the inside of a `re` class."""
    chars = regex.findall(pattern, _COMMON_CHARS)
    ranges: list[list[str]] = []
    for char in chars:
        if ranges and ord(char) == ord(ranges[-1][1]) + 1:
            ranges[-1][1] = char
        else:
            ranges.append([char, char])
    return "".join(re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}" for low, high in ranges)


_SPACE, _LETTER, _NUMBER = _char_class(r"\s"), _char_class(r"\p{L}"), _char_class(r"\p{N}")
_OTHER, _NON_SPACE = _char_class(r"[^\s\p{L}\p{N}]"), _char_class(r"\S")
COMMON_REGEX = re.compile(
    rf"'(?:[sdmt]|ll|ve|re)| ?[{_LETTER}]+| ?[{_NUMBER}]+| ?[{_OTHER}]+|[{_SPACE}]+(?![{_NON_SPACE}])|[{_SPACE}]+"
)
_UNCOMMON = re.compile("[^" + "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in _COMMON_RANGES) + "]+")
# A common non-space followed by a common space: a pre-token always starts at that space
# (nothing in GPT-2's pattern runs from a non-space into a space, and nothing before looks past
# it), so the text on each side pre-tokenizes alone exactly as it does whole.
_CUT = f"[{_NON_SPACE}][{_SPACE}]"
_NEXT_CUT = re.compile(_CUT)
_LAST_CUT = regex.compile(f"(?r){_CUT}")
# Common stretches shorter than this between uncommon characters go to `regex` with them: a
# switch of engines costs a few microseconds, more than a short stretch saves.
_MIN_COMMON_RUN = 256


def find_pretokens(text: str) -> list[str]:
    """GPT-2's pre-tokens of `text` (special tokens not cut out), as `GPT2_REGEX.findall` finds
    them but faster: stretches of common characters, cut at the safe points of `_CUT`, go
    through `COMMON_REGEX`, and only the words around uncommon characters through `GPT2_REGEX`."""
    pretokens: list[str] = []
    start, end = 0, len(text)
    while True:
        uncommon = _UNCOMMON.search(text, start)
        if uncommon is None:
            pretokens += COMMON_REGEX.findall(text, start)
            return pretokens
        if uncommon.start() - start >= _MIN_COMMON_RUN:
            cut = _LAST_CUT.search(text, start, uncommon.start())
            if cut is not None:
                pretokens += COMMON_REGEX.findall(text, start, cut.start() + 1)
                start = cut.start() + 1
        stop = uncommon.end()
        while True:  # extend over the word's end, and over any uncommon character close after it
            cut = _NEXT_CUT.search(text, stop)
            if cut is None:
                stop = end
                break
            stop = cut.start() + 1
            uncommon = _UNCOMMON.search(text, stop)
            if uncommon is None or uncommon.start() - stop >= _MIN_COMMON_RUN:
                break
            stop = uncommon.end()
        pretokens += GPT2_REGEX.findall(text, start, stop)
        if stop == end:
            return pretokens
        start = stop


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


def count_pretokens(text: str, special_regex: regex.Pattern | None) -> Counter[str]:
    """How often each ordinary pre-token occurs; special tokens are dropped (they are never merged)."""
    counts: Counter[str] = Counter()
    for piece, is_special in split_special_tokens(text, special_regex):
        if not is_special:
            counts.update(find_pretokens(piece))
    return counts
