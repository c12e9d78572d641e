"""Encode text to token ids and back with a byte-level BPE vocabulary and its merges.

Encoding is pre-tokenize, then merge inside each pre-token by rank. Real text repeats its
pre-tokens (" the", ",") constantly, so each pre-token's ids are memoised in a bounded dict
and the per-token merge loop only runs on the first sighting; the rest of `encode` is
C-level iteration (regex matches, dict lookups, chaining the cached id tuples).
A pre-token that is itself a vocabulary entry encodes to that one id without merging, as
tiktoken does, which is both the common case and what keeps our ids identical to its.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from itertools import chain

import regex

from diffusionlm.errors import InputError
from diffusionlm.tokenizer.pretokenize import find_pretokens, special_token_regex

# Distinct pre-tokens remembered; at a few hundred bytes each this caps the cache near 50 MB.
# When full it is emptied and refilled: cheaper per lookup than an LRU, and just as bounded.
PRETOKEN_CACHE_SIZE = 1 << 17
# encode_iterable buffers at least this many characters before cutting, to amortise the cut search.
STREAM_BUFFER_CHARS = 1 << 16
# The last position in a string where a non-space is followed by a space (see `_safe_cut`).
_LAST_WORD_END = regex.compile(r"(?r)\S\s")


class Tokenizer:
    """Byte-level BPE tokenizer.

    `vocab` maps ids to token bytes; `merges` lists merged pairs in the order they were learned
    (earlier merges apply first). `special_tokens` are strings encoded as a single id each:
    a token whose bytes are already in the vocabulary keeps its id (GPT-2's `<|endoftext|>`
    stays 50256), the others get new ids after the last one.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: Iterable[str] | None = None,
    ):
        if set(vocab) != set(range(len(vocab))):
            raise InputError(f"tokenizer: vocabulary ids must be 0..{len(vocab) - 1} with no gaps")
        self.vocab = dict(vocab)
        self.merges = list(merges)
        token_ids: dict[bytes, int] = {}
        for token_id in sorted(self.vocab, reverse=True):
            token_ids[self.vocab[token_id]] = token_id  # duplicates resolve to the smallest id
        self._special_ids: dict[str, int] = {}
        for token in dict.fromkeys(special_tokens or ()):
            token_bytes = token.encode("utf-8")
            if token_bytes not in token_ids:
                token_ids[token_bytes] = len(self.vocab)
                self.vocab[len(self.vocab)] = token_bytes
            self._special_ids[token] = token_ids[token_bytes]
        self._token_ids = token_ids
        self._special_regex = special_token_regex(self._special_ids)
        self._byte_ids = [self._require_id(token_ids, bytes([byte]), "byte") for byte in range(256)]
        # The merge loop compares and looks up plain ints rather than building tuples: a pair
        # (left, right) is the key `left << id_bits | right`, and its value `rank << id_bits | merged`
        # sorts by rank and carries the merged id in its low bits.
        self._id_bits = id_bits = max(len(self.vocab) - 1, 1).bit_length()
        self._no_merge = len(self.merges) << id_bits  # above every real merge's value
        self._merge_ranks: dict[int, int] = {}
        for rank, (first, second) in enumerate(self.merges):
            left = self._require_id(token_ids, first, "merge token")
            right = self._require_id(token_ids, second, "merge token")
            merged = self._require_id(token_ids, first + second, "merged token")
            self._merge_ranks.setdefault(left << id_bits | right, rank << id_bits | merged)
        self._pretoken_cache: dict[str, tuple[int, ...]] = {}

    @staticmethod
    def _require_id(token_ids: dict[bytes, int], token: bytes, what: str) -> int:
        try:
            return token_ids[token]
        except KeyError:
            raise InputError(f"tokenizer: {what} {token!r} is not in the vocabulary") from None

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id."""
        return dict(self._special_ids)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are 0..vocab_size-1)."""
        return len(self.vocab)

    @property
    def fingerprint(self) -> str:
        """A short hash of the vocabulary, merges and special ids: equal fingerprints encode text
        to equal ids. Pre-tokenized data records it, so it is never read with another tokenizer."""
        digest = hashlib.sha256()
        for token_id in range(len(self.vocab)):
            digest.update(len(self.vocab[token_id]).to_bytes(4, "little") + self.vocab[token_id])
        for first, second in self.merges:
            digest.update(len(first).to_bytes(4, "little") + first + second)
        digest.update(json.dumps(sorted(self._special_ids.items())).encode())
        return digest.hexdigest()[:16]

    def token_id(self, token: str) -> int:
        """The id of a special token, or of any single-token string (e.g. " the").

        A string that is not one token is an `InputError`: it usually means a config names a
        special token the tokenizer files do not have.
        """
        if token in self._special_ids:
            return self._special_ids[token]
        token_bytes = token.encode("utf-8")
        if token_bytes not in self._token_ids:
            raise InputError(f"tokenizer: {token!r} is not a single token of this vocabulary")
        return self._token_ids[token_bytes]

    def _merge_pretoken(self, pretoken: str) -> tuple[int, ...]:
        """BPE-merge one pre-token: merge the lowest-rank adjacent pair (the leftmost on a tie)
        until no pair has a merge. Only the two pairs beside a merge change, so the list of
        pair values is patched rather than rebuilt, and `min`/`index` scan it in C."""
        token_bytes = pretoken.encode("utf-8")
        whole = self._token_ids.get(token_bytes)
        if whole is not None:
            return (whole,)
        ids = list(map(self._byte_ids.__getitem__, token_bytes))
        find_merge = self._merge_ranks.get
        id_bits, no_merge = self._id_bits, self._no_merge
        id_mask = (1 << id_bits) - 1
        merges = [find_merge(left << id_bits | right, no_merge) for left, right in zip(ids, ids[1:])]
        while merges:
            best = min(merges)
            if best == no_merge:
                break
            i = merges.index(best)
            merged = best & id_mask
            ids[i : i + 2] = (merged,)
            del merges[i]
            if i > 0:
                merges[i - 1] = find_merge(ids[i - 1] << id_bits | merged, no_merge)
            if i < len(merges):
                merges[i] = find_merge(merged << id_bits | ids[i + 1], no_merge)
        return tuple(ids)

    def _encode_ordinary(self, text: str) -> list[int]:
        pretokens = find_pretokens(text)
        cache = self._pretoken_cache
        try:  # the common case once warm: every pre-token already seen
            return list(chain.from_iterable(map(cache.__getitem__, pretokens)))
        except KeyError:
            pass
        unseen = set(pretokens).difference(cache)
        if len(cache) + len(unseen) > PRETOKEN_CACHE_SIZE:
            cache.clear()
            unseen = set(pretokens)
        cache.update(zip(unseen, map(self._merge_pretoken, unseen)))
        return list(chain.from_iterable(map(cache.__getitem__, pretokens)))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens in it become their single ids."""
        if self._special_regex is None or not any(token in text for token in self._special_ids):
            return self._encode_ordinary(text)  # skips a regex pass over text with no special token
        ids: list[int] = []
        start = 0
        for match in self._special_regex.finditer(text):
            ids += self._encode_ordinary(text[start : match.start()])
            ids.append(self._special_ids[match.group()])
            start = match.end()
        ids += self._encode_ordinary(text[start:])
        return ids

    def _safe_cut(self, text: str) -> int:
        """A position where `text` can be split and encoded in two halves with the same result,
        whatever text follows it; 0 when there is none yet.

        A space right after a non-space always starts a new pre-token (a pre-token holds spaces
        only at its start or is all spaces), and no match starting earlier looks past it. The
        cut also stays a full special token's length from the end, so a special token still
        arriving cannot straddle it, and is moved to the start of any special token it would split.
        """
        longest_special = max(map(len, self._special_ids), default=1)
        limit = len(text) - longest_special
        match = _LAST_WORD_END.search(text, 0, max(limit + 1, 0))
        if match is None:
            return 0
        cut = match.start() + 1
        if self._special_regex is not None:
            for special in self._special_regex.finditer(text, 0, cut + longest_special):
                if special.start() < cut < special.end():
                    return special.start()
        return cut

    def encode_iterable(self, texts: Iterable[str], buffer_chars: int = STREAM_BUFFER_CHARS) -> Iterator[int]:
        """Lazily encode a stream of strings (e.g. a file's lines) as if it were one string.

        Memory stays bounded: text is buffered until it holds `buffer_chars` characters, then
        encoded up to a safe cut point (see `_safe_cut`), so ids come out while the stream is
        still being read.
        """
        buffer = ""
        for text in texts:
            buffer += text
            if len(buffer) < buffer_chars:
                continue
            cut = self._safe_cut(buffer)
            if cut:
                yield from self.encode(buffer[:cut])
                buffer = buffer[cut:]
        if buffer:
            yield from self.encode(buffer)

    def count_text_bytes(self, ids: Iterable[int]) -> int:
        """UTF-8 bytes of the original text that `ids` stand for; special tokens count none.

        The denominator of bits per byte, the loss unit that compares across tokenizers.
        """
        vocab, specials = self.vocab, set(self._special_ids.values())
        return sum(len(vocab[i]) for i in ids if i not in specials)

    def decode(self, ids: Iterable[int], skip_unknown: bool = False) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD.

        An id outside the vocabulary is an `InputError`, or is dropped with `skip_unknown=True`.
        """
        vocab = self.vocab
        if skip_unknown:
            pieces = [vocab[i] for i in ids if i in vocab]
        else:
            try:
                pieces = [vocab[i] for i in ids]
            except KeyError as err:
                raise InputError(
                    f"cannot decode token id {err.args[0]!r}: not in the vocabulary (ids 0..{len(vocab) - 1})"
                ) from None
        return b"".join(pieces).decode("utf-8", errors="replace")
