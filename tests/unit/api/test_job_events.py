"""JobEvents: one pattern subscription wakes the long-polls of the job that changed, never misses a change.

Against a real redis-server: the wake-ups travel through Redis pub/sub, published by the store's script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from api.jobs import events as job_events
from api.jobs.events import JobEvents
from shared.jobs.model import Job, JobStatus
from shared.jobs.store import JobStore
from shared.keys import Keys

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


class _CountingStore:
    """The store, counting reads (the waiter's re-reads are what the listener's position saves)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.reads = 0

    async def get(self, job_id: str) -> Job | None:
        self.reads += 1
        return await self.store.get(job_id)


def test_a_job_read_after_the_position_is_not_read_again_before_it_ends(redis_server_url: str) -> None:
    async def scenario(events: JobEvents, store: JobStore) -> None:
        await _queued(store, "job_a")
        since = events.position()
        seen = await store.get("job_a")
        counting = _CountingStore(store)
        waiting = asyncio.create_task(
            events.wait_until_final(counting, "job_a", timeout_s=20, seen=seen, since=since)  # type: ignore[arg-type]
        )
        await _until(lambda: "job_a" in events._waiters)
        assert counting.reads == 0
        assert await store.transition("job_a", JobStatus.RUNNING)
        assert await store.transition("job_a", JobStatus.SUCCEEDED, caption="a cat")
        done = await waiting
        assert done is not None and done.status is JobStatus.SUCCEEDED
        assert counting.reads == 1  # the read of the ended job only

    run(redis_server_url, scenario)


def test_an_end_between_the_position_and_the_wait_is_never_missed(redis_server_url: str) -> None:
    async def scenario(events: JobEvents, store: JobStore) -> None:
        await _queued(store, "job_a")
        since = events.position()
        seen = await store.get("job_a")
        assert await store.transition("job_a", JobStatus.CANCELED)
        await _until(lambda: "job_a" in events._recent_ends)
        done = await events.wait_until_final(store, "job_a", timeout_s=20, seen=seen, since=since)
        assert done is not None and done.status is JobStatus.CANCELED

    run(redis_server_url, scenario)


def test_a_lost_subscription_or_too_many_ends_since_the_position_means_a_re_read(
    redis_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_events, "RECENT_ENDS", 2)

    async def scenario(events: JobEvents, store: JobStore) -> None:
        await _queued(store, "job_a")
        since = events.position()
        seen = await store.get("job_a")
        assert seen is not None and since is not None
        for other in ("job_b", "job_c", "job_d"):
            await _queued(store, other)
            assert await store.transition(other, JobStatus.CANCELED)
        await _until(lambda: "job_d" in events._recent_ends)
        assert events._may_have_ended("job_a", since)
        assert not events._may_have_ended("job_a", events.position())
        stale = job_events.Position(since.subscription - 1, events.position().ends_seen)  # type: ignore[union-attr]
        assert events._may_have_ended("job_a", stale)
        assert events._may_have_ended("job_a", None)
        # A final job it re-reads comes back at once.
        assert await store.transition("job_a", JobStatus.CANCELED)
        done = await events.wait_until_final(store, "job_a", timeout_s=20, seen=seen, since=since)
        assert done is not None and done.status is JobStatus.CANCELED

    run(redis_server_url, scenario)
