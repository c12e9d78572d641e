"""Order-preserving tokenization, in the calling process or in a pool of worker processes.

Why not `Pool.imap`: it drains its input iterator in a background thread with no bound, which
for a streaming dataset means reading the whole dataset into memory. Here the caller's thread
submits chunks of rows itself and keeps at most `max_chunks_in_flight` of them outstanding, and
results are taken strictly in submission order, so the token stream is identical to encoding
in process (resume and determinism depend on that). Row bookkeeping stays with the caller:
rows still in flight when a state is saved are simply encoded again after a resume.

Torch-free on purpose: worker processes import only this module and the encoder's own module.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.pool
import signal
from collections.abc import Callable, Iterable, Iterator

Encode = Callable[[str], list[int]]

_worker_encode: Encode | None = None


def _init_worker(encode: Encode) -> None:
    """Pool initializer: receive the encoder once per worker, not once per chunk. Ctrl-C is the
    parent's to handle (it stops the pool); workers ignore it instead of each printing a traceback."""
    global _worker_encode
    _worker_encode = encode
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_chunk(texts: list[str]) -> list[list[int]]:
    assert _worker_encode is not None, "worker used before _init_worker"
    return [_worker_encode(text) for text in texts]


class OrderedEncoder:
    """Encode a stream of texts to token lists (each followed by `eot`), keeping input order.

    `encode` may also map a row to a (prompt ids, response ids) pair (SFT), whose response
    gets the `eot`.

    num_workers = 0 encodes in process, one row at a time with no lookahead. Otherwise a pool
    of `num_workers` processes is started on first use (fork where available, like torch's
    DataLoader; `encode` must be picklable where it is not) and reused until `close()`.
    """

    def __init__(self, encode: Encode, eot_token_id: int, num_workers: int,
                 chunk_rows: int = 64, max_chunks_in_flight: int | None = None) -> None:
        self.encode = encode
        self.eot_token_id = eot_token_id
        self.num_workers = num_workers
        self.chunk_rows = chunk_rows
        self.max_chunks_in_flight = max_chunks_in_flight or 2 * max(num_workers, 1)
        self._pool: multiprocessing.pool.Pool | None = None

    def encode_stream(self, texts: Iterable[str]) -> Iterator[list[int]]:
        if self.num_workers == 0:
            for text in texts:
                yield self._with_eot(self.encode(text))
            return
        pool = self._get_pool()
        texts = iter(texts)
        pending: collections.deque = collections.deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.max_chunks_in_flight:
                chunk = [text for _, text in zip(range(self.chunk_rows), texts)]
                exhausted = len(chunk) < self.chunk_rows
                if chunk:
                    pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if not pending:
                return
            for tokens in pending.popleft().get():
                yield self._with_eot(tokens)

    def _with_eot(self, tokens: list[int] | tuple[list[int], list[int]]) -> list[int] | tuple[list[int], list[int]]:
        """A document followed by eot; for an SFT (prompt, response) pair, the response is."""
        if isinstance(tokens, tuple):
            prompt, response = tokens
            return list(prompt), [*response, self.eot_token_id]
        return [*tokens, self.eot_token_id]

    def _get_pool(self) -> multiprocessing.pool.Pool:
        if self._pool is None:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self._pool = context.Pool(self.num_workers, initializer=_init_worker, initargs=(self.encode,))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
