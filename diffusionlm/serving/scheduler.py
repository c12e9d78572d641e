"""Continuous request batching: concurrent requests with the same sampler settings share one
left-padded sampler call.

Requests wait in one FIFO queue. The scheduler takes the oldest, lets it wait for company
until `max_batch_size` sequences are ready or `max_wait_s` has passed since it arrived or since
the sampler became free, whichever is later, gathers every queued request with equal settings
that still fits, and hands the batch to the one sampler thread. Counting from the moment the
sampler frees up matters for clients that send their next request when the last one returns:
without it, the requests queued during a call leave without the ones that call has just
answered, and the clients settle into two half-size cohorts that take turns. Requests with other settings wait for a later call; nothing overtakes the oldest
request. A request whose client went away is dropped from the queue; one already in a sampler
call has its output discarded, and the call stops early once all of its clients are gone.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from diffusionlm.serving.metrics import ServerMetrics
from diffusionlm.serving.protocol import APIError, SamplerSettings

_job_ids = itertools.count()


@dataclass
class Row:
    """One sequence of a job: a prompt and one of its `n` choices (OpenAI's choice `index`)."""

    index: int
    prompt_ids: list[int]
    seed: int


@dataclass
class Job:
    """One HTTP request inside the server: its sequences, its settings, and the queue its
    events go back on (filled from the sampler thread, read by the request handler)."""

    rows: list[Row]
    settings: SamplerSettings
    stop: list[str]
    stream: bool
    stream_canvas: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    enqueued_at: float = field(default_factory=time.perf_counter)
    id: int = field(default_factory=lambda: next(_job_ids))

    @property
    def batch_key(self) -> Hashable:
        """Jobs with equal keys may share a sampler call. Threshold decoding with random draws
        depends on the batch (a row that fills its block early keeps drawing until the whole
        batch has), so such a job runs alone and its seed still reproduces its text."""
        key = self.settings.key()
        return key if self.settings.batch_invariant else (key, self.id)

    def emit(self, event: tuple) -> None:
        """Thread-safe: hand an event to the request handler."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class BatchScheduler:
    """Queue of jobs -> batches -> `run_batch(jobs)` on a single worker thread."""

    def __init__(self, run_batch: Callable[[list[Job]], None], *, max_batch_size: int, max_wait_s: float,
                 max_queue: int, metrics: ServerMetrics) -> None:
        self.run_batch, self.metrics = run_batch, metrics
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        self._pending: list[Job] = []
        self._arrived = asyncio.Event()
        self._free_since = 0.0  # perf_counter() when the last sampler call ended
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler")

    @property
    def queued_rows(self) -> int:
        return sum(len(job.rows) for job in self._pending)

    def submit(self, job: Job) -> None:
        if self.queued_rows + len(job.rows) > self.max_queue:
            raise APIError(429, f"the server queue is full ({self.queued_rows} sequences waiting, max_queue "
                                f"{self.max_queue}); retry later", type="rate_limit_error", code="queue_full")
        self._pending.append(job)
        self._changed()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it is still queued, else discard its output."""
        job.cancelled = True
        if job in self._pending:
            self._pending.remove(job)
            self._changed()

    def _changed(self) -> None:
        self.metrics.queue_depth.set(self.queued_rows)
        self._arrived.set()

    def _batch_for(self, first: Job) -> list[Job]:
        """`first` and the queued jobs with its settings, oldest first, up to max_batch_size rows
        (a job larger than that runs alone)."""
        batch, rows = [first], len(first.rows)
        for job in self._pending:
            if job is not first and job.batch_key == first.batch_key and rows + len(job.rows) <= self.max_batch_size:
                batch.append(job)
                rows += len(job.rows)
        return batch

    async def _next_batch(self) -> list[Job]:
        """Wait for the oldest job's batch to fill or its wait to run out."""
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            first = self._pending[0]
            while first in self._pending:
                batch = self._batch_for(first)
                left = max(first.enqueued_at, self._free_since) + self.max_wait_s - time.perf_counter()
                if sum(len(job.rows) for job in batch) >= self.max_batch_size or left <= 0:
                    for job in batch:
                        self._pending.remove(job)
                    self.metrics.queue_depth.set(self.queued_rows)
                    return batch
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    pass

    async def run(self) -> None:
        """The scheduling loop (a task on the server's event loop)."""
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            rows = sum(len(job.rows) for job in batch)
            self.metrics.running.set(rows)
            self.metrics.batch_size.observe(rows)
            try:
                await loop.run_in_executor(self._executor, self.run_batch, batch)
            finally:
                self.metrics.running.set(0)
                self._free_since = time.perf_counter()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
