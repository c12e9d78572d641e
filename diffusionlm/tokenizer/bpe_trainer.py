"""Byte-level BPE training.

Two phases. First the input file is pre-tokenized and each distinct pre-token counted; this is
most of the work on real corpora, so the file is cut into chunks at special tokens or word
starts (a special token is never merged across and a pre-token never crosses a word start, so
cutting there changes nothing; see `boundary_pattern`) and the chunks are counted in worker processes
that each read only their own byte range, a few MB at most. Then merges are
learned on the distinct words weighted by their counts: the pair counts are updated
incrementally (a pair -> words index means a merge only touches the words that contain it),
and the most frequent pair comes off a lazy max-heap.

Ties between equally frequent pairs go to the lexicographically greatest pair, compared as
`(bytes, bytes)`. This module must stay importable without torch: tokenizer training runs on
machines and in worker processes that never need it.
"""

from __future__ import annotations

import heapq
import os
import re
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from diffusionlm.errors import InputError
from diffusionlm.tokenizer.pretokenize import count_pretokens, special_token_regex

# Below this many bytes a worker pool costs more than it saves.
PARALLEL_MIN_BYTES = 1 << 20
# Upper bound on one chunk, so a worker's memory stays flat however large the file is.
MAX_CHUNK_BYTES = 4 << 20
# How far a chunk boundary search reads at a time.
SCAN_BLOCK_BYTES = 1 << 16
# Show a progress bar only when there is enough work to watch.
PROGRESS_MIN_MERGES = 1000


def check_input_file(path: Path) -> int:
    """The file's size; a missing or unreadable file is an `InputError` naming it."""
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    try:
        return path.stat().st_size
    except OSError as err:
        raise InputError(f"{path}: cannot read input file ({err.strerror})") from None


def heldout_offset(path: Path, heldout_bytes: int) -> int:
    """Where training should stop so that about the last `heldout_bytes` are held out.

    The cut goes just after a newline, so it splits neither a UTF-8 character nor a line; it
    is the file size when nothing is held out.
    """
    size = check_input_file(path)
    if heldout_bytes <= 0:
        return size
    target = size - heldout_bytes
    with open(path, "rb") as handle:
        while target > 0:
            start = max(0, target - SCAN_BLOCK_BYTES)
            handle.seek(start)
            newline = handle.read(target - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            target = start
    raise InputError(f"{path}: holding out the last {heldout_bytes} bytes leaves no complete line to train on")


WORD_BOUNDARY = rb"(?<=[!-~])[ \n]"


def boundary_pattern(special_tokens: list[str]) -> re.Pattern[bytes]:
    """Where a chunk may start: at a special token (never merged across), or at an ASCII space
    or newline after a visible ASCII character. GPT-2's pre-tokens hold whitespace only at
    their start or are all whitespace, and no match starting earlier looks past such a space,
    so a cut there pre-tokenizes exactly like the whole text. Such a cut can fall inside a
    special token only if the token holds whitespace; then only special tokens are cut at.
    (Cutting at spaces too keeps a file with few or no special tokens streaming in parallel
    chunks instead of one.)"""
    specials = [re.escape(token.encode("utf-8")) for token in special_tokens]
    if any(any(ch.isspace() for ch in token) for token in special_tokens):
        return re.compile(b"|".join(specials))
    return re.compile(b"|".join([*specials, WORD_BOUNDARY]))


def find_chunk_boundaries(path: Path, num_chunks: int, boundary: re.Pattern[bytes], end: int) -> list[int]:
    """Byte offsets `[0, ..., end]` cutting `path[:end]` into about `num_chunks` pieces.

    Each inner boundary is moved forward to the next match of `boundary`, so no chunk starts or
    ends inside a special token, a pre-token or a UTF-8 character.
    """
    boundaries = [0]
    overlap = 64  # longer than any special token we expect; a longer one only moves a cut further
    with open(path, "rb") as handle:
        for guess in range(1, max(num_chunks, 1)):
            position = max(guess * end // num_chunks, boundaries[-1])
            found = end
            while position < end:
                handle.seek(position)
                match = boundary.search(handle.read(min(SCAN_BLOCK_BYTES + overlap, end - position)))
                if match:
                    found = position + match.start()
                    break
                position += SCAN_BLOCK_BYTES
            if found > boundaries[-1]:
                boundaries.append(found)
    if boundaries[-1] != end:
        boundaries.append(end)
    return boundaries


def count_chunk(path: Path, start: int, end: int, special_tokens: list[str]) -> Counter[str]:
    """Pre-token counts of `path[start:end]`, read by offset (a worker holds only its chunk)."""
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not valid UTF-8 ({err.reason} at byte {start + err.start})") from None
    return count_pretokens(text, special_token_regex(special_tokens))


def count_file_pretokens(
    path: Path,
    special_tokens: list[str],
    num_processes: int | None = None,
    end: int | None = None,
    progress: bool = False,
) -> Counter[str]:
    """Pre-token counts of the file's first `end` bytes (all of it by default), in parallel."""
    size = check_input_file(path)
    end = size if end is None else min(end, size)
    workers = num_processes or os.cpu_count() or 1
    num_chunks = -(-end // MAX_CHUNK_BYTES)
    if workers > 1 and end >= PARALLEL_MIN_BYTES:
        num_chunks = max(num_chunks, 4 * workers)
    boundaries = find_chunk_boundaries(path, num_chunks, boundary_pattern(special_tokens), end)
    ranges = list(zip(boundaries[:-1], boundaries[1:]))
    bar = tqdm(total=len(ranges), desc="pre-tokenizing", unit="chunk", disable=not progress or len(ranges) < 2)
    counts: Counter[str] = Counter()
    if workers <= 1 or len(ranges) <= 1:
        for start, stop in ranges:
            counts.update(count_chunk(path, start, stop, special_tokens))
            bar.update()
    else:
        # spawn: workers start clean whatever threads the parent has (forking a process that
        # runs threads, e.g. under torch, can deadlock), and they are our direct children.
        with ProcessPoolExecutor(max_workers=min(workers, len(ranges)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(count_chunk, path, start, stop, special_tokens) for start, stop in ranges]
            for future in futures:
                counts.update(future.result())
                bar.update()
    bar.close()
    return counts


def _descending_key(token: bytes) -> str:
    """A string that sorts in the reverse byte order of `token`, so a min-heap pops the greatest.

    Each byte b becomes chr(255 - b) and a terminator chr(256) sorts after every byte, so a
    proper prefix (the smaller token) sorts after its extensions.
    """
    return "".join(chr(255 - byte) for byte in token) + chr(256)


class _PairIndex:
    """Pair counts over weighted words, the pair -> words index, and a lazy max-heap.

    Heap entries are `(-count, key(a), key(b), a, b)`. Counts only grow for pairs containing a
    freshly merged token, and those are pushed once after each merge; a stale entry (its count
    has since dropped) is re-pushed with the current count when it surfaces.
    """

    def __init__(self, words: list[list[int]], counts: list[int], vocab: dict[int, bytes]):
        self.words = words
        self.word_counts = counts
        self.pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        self.pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)
        self.keys = {token_id: _descending_key(token) for token_id, token in vocab.items()}
        for index, (word, count) in enumerate(zip(words, counts)):
            for pair in zip(word, word[1:]):
                self.pair_counts[pair] += count
                self.pair_words[pair].add(index)
        self.heap = [self._entry(pair, count) for pair, count in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def _entry(self, pair: tuple[int, int], count: int) -> tuple:
        return (-count, self.keys[pair[0]], self.keys[pair[1]], pair[0], pair[1])

    def pop_best(self) -> tuple[int, int] | None:
        """The most frequent pair (greatest bytes on ties), or None when no pair is left."""
        while self.heap:
            entry = heapq.heappop(self.heap)
            pair = (entry[3], entry[4])
            count = self.pair_counts.get(pair, 0)
            if count == -entry[0]:
                return pair
            if 0 < count < -entry[0]:
                heapq.heappush(self.heap, self._entry(pair, count))
        return None

    def merge(self, pair: tuple[int, int], new_id: int, new_token: bytes) -> None:
        """Replace every occurrence of `pair` by `new_id`, updating only the words that hold it."""
        self.keys[new_id] = _descending_key(new_token)
        first, second = pair
        pair_counts, pair_words = self.pair_counts, self.pair_words
        fresh: set[tuple[int, int]] = set()
        for index in pair_words.pop(pair):
            word = self.words[index]
            merged: list[int] = []
            i, length = 0, len(word)
            while i < length:
                if i + 1 < length and word[i] == first and word[i + 1] == second:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            if len(merged) == length:
                continue
            count = self.word_counts[index]
            for old in zip(word, word[1:]):
                pair_counts[old] -= count
            for new in zip(merged, merged[1:]):
                pair_counts[new] += count
                pair_words[new].add(index)
                if new_id in new:
                    fresh.add(new)
            self.words[index] = merged
        del pair_counts[pair]
        for new in fresh:
            if pair_counts[new] > 0:
                heapq.heappush(self.heap, self._entry(new, pair_counts[new]))


def learn_merges(
    word_counts: Counter[bytes], num_merges: int, progress: bool = False
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Learn up to `num_merges` merges over weighted byte strings; ids 0..255 are the bytes.

    Stops early when no pair is left (every word is a single token).
    """
    vocab = {byte: bytes([byte]) for byte in range(256)}
    words = [list(word) for word in word_counts]
    index = _PairIndex(words, list(word_counts.values()), vocab)
    merges: list[tuple[bytes, bytes]] = []
    show = progress and num_merges >= PROGRESS_MIN_MERGES
    for _ in tqdm(range(num_merges), desc="BPE merges", unit="merge", disable=not show, mininterval=0.5):
        pair = index.pop_best()
        if pair is None:
            break
        new_id = len(vocab)
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        merges.append((vocab[pair[0]], vocab[pair[1]]))
        index.merge(pair, new_id, vocab[new_id])
    return vocab, merges


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str] | tuple[str, ...] = (),
    *,
    num_processes: int | None = None,
    progress: bool = False,
    end_offset: int | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on a UTF-8 text file.

    Returns `(vocab, merges)`: ids 0..255 are the single bytes, then one id per merge in the
    order learned, then the special tokens in the order given, contiguous. `vocab_size`
    counts all three; fewer merges are learned when the corpus runs out of pairs.
    `end_offset` trains on the file's first bytes only (to hold out its tail for evaluation).
    Files over a few MB are pre-tokenized by `spawn`ed worker processes, so a script calling
    this needs the usual `if __name__ == "__main__":` guard.
    """
    path = Path(input_path)
    special_tokens = list(dict.fromkeys(special_tokens))
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise InputError(
            f"vocab_size {vocab_size} is too small: it must be at least 256 bytes + "
            f"{len(special_tokens)} special tokens = {minimum}"
        )
    if check_input_file(path) == 0:
        raise InputError(f"{path}: input file is empty")
    counts = count_file_pretokens(path, special_tokens, num_processes, end_offset, progress)
    word_counts = Counter({token.encode("utf-8"): count for token, count in counts.items()})
    vocab, merges = learn_merges(word_counts, vocab_size - minimum, progress)
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    return vocab, merges
