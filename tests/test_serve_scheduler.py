"""The batching scheduler on its own: which queued requests share a sampler call."""

from __future__ import annotations

import asyncio
import time

from config.schemas import InferenceConfig
from diffusionlm.serving.metrics import ServerMetrics
from diffusionlm.serving.protocol import SamplerSettings
from diffusionlm.serving.scheduler import BatchScheduler, Job, Row

SETTINGS = SamplerSettings(InferenceConfig(), gen_length=8)


def job(settings: SamplerSettings = SETTINGS, rows: int = 1) -> Job:
    return Job([Row(i, [1, 2], i) for i in range(rows)], settings, [], False, False, asyncio.get_running_loop())


async def run_scheduler(scenario, *, max_batch_size: int, max_wait_s: float, call_s: float = 0.0) -> list[list[int]]:
    """Run `scenario(scheduler, calls, ended)`; a sampler call records its jobs' ids, takes
    `call_s`, then counts itself in `ended`."""
    calls: list[list[int]] = []
    ended: list[float] = []

    def run_batch(jobs: list[Job]) -> None:
        calls.append([j.id for j in jobs])
        time.sleep(call_s)
        ended.append(time.perf_counter())

    scheduler = BatchScheduler(run_batch, max_batch_size=max_batch_size, max_wait_s=max_wait_s, max_queue=64,
                               metrics=ServerMetrics())
    task = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(scenario(scheduler, calls, ended), 30)
    finally:
        task.cancel()
        scheduler.close()
    return calls


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.005)


def test_only_jobs_with_equal_settings_share_a_call():
    async def scenario(scheduler, calls, ended):
        other = SamplerSettings(InferenceConfig(steps=4), gen_length=8)
        jobs = [job(), job(other), job(), job(other, rows=2)]
        for j in jobs:
            scheduler.submit(j)
        await until(lambda: len(calls) == 2)
        assert calls == [[jobs[0].id, jobs[2].id], [jobs[1].id, jobs[3].id]]

    asyncio.run(run_scheduler(scenario, max_batch_size=8, max_wait_s=0.05))


def test_a_full_batch_leaves_at_once_and_the_rest_waits_its_turn():
    async def scenario(scheduler, calls, ended):
        jobs = [job(rows=2), job(rows=2), job(rows=1)]
        for j in jobs:
            scheduler.submit(j)
        await until(lambda: len(calls) == 2)
        assert calls == [[jobs[0].id, jobs[1].id], [jobs[2].id]]

    asyncio.run(run_scheduler(scenario, max_batch_size=4, max_wait_s=0.05))


def test_a_cancelled_job_is_dropped_from_the_queue():
    async def scenario(scheduler, calls, ended):
        first, second = job(), job()
        scheduler.submit(first)
        scheduler.submit(second)
        scheduler.cancel(first)
        await until(lambda: len(calls) == 1)
        assert calls == [[second.id]] and scheduler.queued_rows == 0

    asyncio.run(run_scheduler(scenario, max_batch_size=8, max_wait_s=0.05))


def test_requests_answered_by_a_call_can_join_those_that_queued_during_it():
    """A client resubmitting just after its call ends meets the request that waited through it."""
    async def scenario(scheduler, calls, ended):
        first = job()
        scheduler.submit(first)
        await until(lambda: len(calls) == 1)
        waiting = job()  # queued during the call, waits longer than max_wait before it ends
        scheduler.submit(waiting)
        await until(lambda: ended)
        await asyncio.sleep(0.05)  # the answered client comes back a little after the call ended
        again = job()
        scheduler.submit(again)
        await until(lambda: len(calls) == 2)
        assert calls[1] == [waiting.id, again.id]

    asyncio.run(run_scheduler(scenario, max_batch_size=2, max_wait_s=0.3, call_s=0.6))
