"""Documents out of the lines of a text file (`[data].document_separator`).

`datasets`' "text" loader yields one row per line. That suits a file of one-line documents,
but a file like TinyStories (stories separated by a `<|endoftext|>` line, paragraphs by single
newlines) would then train with a separator after every paragraph, never see "\\n", and have
its shuffle buffer mix paragraphs of different stories. So for text files the lines of each
file are regrouped here, before the rank split and the shuffle buffer, and a document is what
the rest of the pipeline counts as a row (for rank disjointness and resume):

- "line": every line is a document (the loader's own rows, line break removed);
- "blank_line": a run of empty (or whitespace-only) lines ends a document;
- any other string: a separator that ends a document wherever it occurs, on its own line or
  inside one (the separator itself is dropped; `eot` is appended after every document anyway).

In the two grouping modes the lines arrive with their line breaks, so a document keeps its
inner newlines exactly; the newlines around it are trimmed, and empty documents are skipped.
A document never spans two files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from config.schemas import DOCUMENT_PER_BLANK_LINE, DOCUMENT_PER_LINE


def group_lines(lines: Iterable[str], separator: str) -> Iterator[str]:
    """The documents of one file's `lines` (given with their line breaks unless `separator` is "line")."""
    if separator == DOCUMENT_PER_LINE:
        return iter(lines)
    if separator == DOCUMENT_PER_BLANK_LINE:
        return _split_on_blank_lines(lines)
    return _split_on_separator(lines, separator)


def _document(text: str) -> list[str]:
    """`text` without the newlines around it, as a one-item list, or no item if nothing is left."""
    text = text.strip("\n")
    return [text] if text.strip() else []


def _split_on_blank_lines(lines: Iterable[str]) -> Iterator[str]:
    parts: list[str] = []
    for line in lines:
        if line.strip():
            parts.append(line)
        elif parts:
            yield from _document("".join(parts))
            parts = []
    yield from _document("".join(parts))


def _split_on_separator(lines: Iterable[str], separator: str) -> Iterator[str]:
    pending = ""
    for line in lines:
        # Only the new text, plus the tail a separator could start in, needs searching.
        start = max(0, len(pending) - len(separator) + 1)
        pending += line
        while (index := pending.find(separator, start)) >= 0:
            yield from _document(pending[:index])
            pending = pending[index + len(separator):]
            start = 0
    yield from _document(pending)
