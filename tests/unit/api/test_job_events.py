"""JobEvents: one pattern subscription wakes the long-polls of the job that changed, never misses a change.

Against a real redis-server: the wake-ups travel through Redis pub/sub, published by the store's script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from api.job_events import JobEvents
from shared.jobs import Job, JobStatus
from shared.keys import Keys
from shared.store import JobStore

KEYS = Keys("captionizer-events")

Scenario = Callable[[JobEvents, JobStore], Awaitable[None]]


def run(redis_url: str, scenario: Scenario) -> None:
    async def main() -> None:
        redis, events_redis = Redis.from_url(redis_url), Redis.from_url(redis_url)
        events = JobEvents(events_redis, KEYS, reconnect_delay_s=0.05)
        await redis.flushdb()
        events.start()
        try:
            await asyncio.wait_for(events.subscribed.wait(), 10)
            await scenario(events, JobStore(redis, KEYS, 600))
        finally:
            await events.stop()
            await redis.flushdb()
            await redis.aclose()
            await events_redis.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def _queued(store: JobStore, job_id: str) -> None:
    await store.create(Job(id=job_id, image_url="https://example.com/a.png"))


def test_a_waiter_wakes_when_its_job_ends(redis_server_url: str) -> None:
    async def scenario(events: JobEvents, store: JobStore) -> None:
        await _queued(store, "job_a")
        waiting = asyncio.create_task(events.wait_until_final(store, "job_a", timeout_s=20))
        await _until(lambda: "job_a" in events._waiters)
        assert await store.transition("job_a", JobStatus.RUNNING)
        assert await store.transition("job_a", JobStatus.SUCCEEDED, caption="a cat")
        done = await waiting
        assert done is not None and done.status is JobStatus.SUCCEEDED and done.caption == "a cat"
        # Its registration is gone once it answered.
        assert "job_a" not in events._waiters

    run(redis_server_url, scenario)


def test_a_change_to_another_job_does_not_end_the_wait(redis_server_url: str) -> None:
    async def scenario(events: JobEvents, store: JobStore) -> None:
        await _queued(store, "job_a")
        await _queued(store, "job_b")
        waiting = asyncio.create_task(events.wait_until_final(store, "job_a", timeout_s=20))
        await _until(lambda: "job_a" in events._waiters)
        assert await store.transition("job_b", JobStatus.CANCELED)
        assert await store.transition("job_a", JobStatus.CANCELED)
        done = await waiting
        assert done is not None and done.id == "job_a" and done.status is JobStatus.CANCELED

    run(redis_server_url, scenario)


def test_a_final_or_missing_job_answers_at_once_and_a_live_one_after_the_timeout(redis_server_url: str) -> None:
    async def scenario(events: JobEvents, store: JobStore) -> None:
        await _queued(store, "job_done")
        assert await store.transition("job_done", JobStatus.CANCELED)
        finished = await events.wait_until_final(store, "job_done", timeout_s=60)
        assert finished is not None and finished.status is JobStatus.CANCELED
        assert await events.wait_until_final(store, "job_missing", timeout_s=60) is None
        await _queued(store, "job_live")
        still = await events.wait_until_final(store, "job_live", timeout_s=0)
        assert still is not None and still.status is JobStatus.QUEUED

    run(redis_server_url, scenario)


def test_stopping_wakes_every_waiter_with_the_job_as_it_is(redis_server_url: str) -> None:
    async def scenario(events: JobEvents, store: JobStore) -> None:
        await _queued(store, "job_a")
        with events.watch("job_a") as changed, events.watch("job_a") as also_changed:
            assert len(events._waiters["job_a"]) == 2
            await events.stop()
            assert changed.is_set() and also_changed.is_set()
        assert events._waiters == {}

    run(redis_server_url, scenario)
