"""Writer of the legacy `.dat` token file and its sidecar (format: `diffusionlm.data.memmap`).

The token count is not known in advance (the source streams), so ids are appended to the file
in large buffered writes and the sidecar, which states the count, is written last: a `.dat`
without a matching sidecar is never read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from diffusionlm.data.memmap import FORMAT, sidecar_path, token_dtype

FLUSH_TOKENS = 1 << 20


class MemmapWriter:
    """Appends each document's ids (already ending in `eot`) to `path`."""

    def __init__(self, path: Path, vocab_size: int) -> None:
        self.path = path
        self.dtype = token_dtype(vocab_size)
        self.num_tokens = 0
        self.num_documents = 0
        self._buffer: list[int] = []
        self._handle = open(path, "wb")  # noqa: SIM115 - closed by finish() or close()

    def add(self, ids: list[int]) -> None:
        self._buffer.extend(ids)
        self.num_documents += 1
        if len(self._buffer) >= FLUSH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        self._handle.write(np.asarray(self._buffer, dtype=self.dtype).tobytes())
        self.num_tokens += len(self._buffer)
        self._buffer.clear()

    def finish(self, meta: dict) -> Path:
        """Flush and close the `.dat`, then write the sidecar with `meta` plus the counts; returns the sidecar."""
        self._flush()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        sidecar = {"format": FORMAT, "dtype": self.dtype.name, "byte_order": "little", "num_tokens": self.num_tokens,
                   "num_documents": self.num_documents, **meta}
        path = sidecar_path(self.path)
        path.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        return path

    def close(self) -> None:
        """Close the file (idempotent); without finish() the `.dat` has no sidecar and is never read."""
        self._handle.close()
