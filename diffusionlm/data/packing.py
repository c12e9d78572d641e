"""Row boundaries: how tokenized documents (each already ending in `eot`) become sequences.

- pack (the default): concatenate documents and cut `context_length` windows, carrying the
  remainder into the next window. No position is wasted on padding, and the `eot` between
  documents teaches the model where one ends and the next begins.
- pad (LLaDA-style): one document per sequence, truncated to `context_length` and padded with
  `eot`. The pads are ordinary supervised tokens, so the model learns to fill the tail of a
  generation with `eot` once the text is done.
"""

from __future__ import annotations

from collections.abc import Callable


class Packer:
    """Cuts a stream of documents into fixed windows; `carry` holds tokens not yet emitted."""

    def __init__(self, context_length: int, carry: list[int] | None = None) -> None:
        self.context_length = context_length
        self.carry = list(carry or [])

    def next_window(self, next_document: Callable[[], list[int]]) -> list[int]:
        """The next `context_length` tokens, pulling documents from `next_document` as needed."""
        while len(self.carry) < self.context_length:
            self.carry.extend(next_document())
        window = self.carry[: self.context_length]
        del self.carry[: self.context_length]
        return window


def pad_document(tokens: list[int], context_length: int, eot_token_id: int) -> list[int]:
    """One document truncated to `context_length`, padded with `eot` up to it."""
    tokens = tokens[:context_length]
    return tokens + [eot_token_id] * (context_length - len(tokens))
