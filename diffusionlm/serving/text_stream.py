"""The text a client sees of one sequence, released piece by piece as its tokens become final.

The sampler commits tokens anywhere in a block, but a client reading a stream must only get
text that will never change: the tokens left of the first still-masked position. Those are
fed here in order, and three things are held back until they are settled:

- bytes of a UTF-8 character split across tokens (byte-level BPE splits them freely);
- text that might be the start of a stop string (a stop string may span two chunks);
- nothing after the end of sequence token or a stop string.

Streaming and non-streaming responses both go through this class, so they give the same text
whatever the chunking.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping


class CompletionText:
    """Feed final token ids in order; get back the text that is safe to send now."""

    def __init__(self, vocab: Mapping[int, bytes], *, stop: Iterable[str] = (), eos_id: int | None = None) -> None:
        self.vocab, self.stop, self.eos_id = vocab, [s for s in stop if s], eos_id
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded, but possibly the start of a stop string
        self.finish_reason: str | None = None  # "stop" (EOS or stop string) or "length"
        self.tokens = 0  # tokens consumed, up to and including the one that ended the text

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self, token_ids: Iterable[int]) -> str:
        """The next final tokens of the sequence -> newly releasable text."""
        if self.finished:
            return ""
        pieces, ended = [], False
        for token in token_ids:
            self.tokens += 1
            if token == self.eos_id:
                ended = True
                break
            pieces.append(self.vocab[token])
        text = self._held + self._decoder.decode(b"".join(pieces), final=ended)
        released = self._release(text, final=ended)
        if ended and not self.finished:
            self.finish_reason = "stop"
        return released

    def finish(self) -> str:
        """The sequence ran to its length: flush what is held (an incomplete character becomes U+FFFD)."""
        if self.finished:
            return ""
        released = self._release(self._held + self._decoder.decode(b"", final=True), final=True)
        if not self.finished:
            self.finish_reason = "length"
        return released

    def _release(self, text: str, final: bool) -> str:
        cuts = [index for index in (text.find(stop) for stop in self.stop) if index >= 0]
        if cuts:
            self.finish_reason, self._held = "stop", ""
            return text[:min(cuts)]
        hold = 0 if final else self._stop_prefix_length(text)
        self._held = text[len(text) - hold:]
        return text[:len(text) - hold]

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest end of `text` that some stop string starts with."""
        longest = 0
        for stop in self.stop:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest
