"""CoalescingJobStore: transitions issued in one loop turn share a pipeline, each with its own outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis.aioredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.errors import QueueUnavailable
from shared.jobs.model import Job, JobStatus, utc_now
from shared.keys import Keys
from worker.captioning.job_writes import CoalescingJobStore


class CountingRedis(fakeredis.aioredis.FakeRedis):
    """Counts the pipelines opened on it."""

    pipelines = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        type(self).pipelines += 1
        return super().pipeline(*args, **kwargs)


async def _stored(store: CoalescingJobStore, count: int) -> list[Job]:
    jobs = [Job(id=f"job_{n}", image_url="https://example.com/a.png") for n in range(count)]
    for job in jobs:
        await store.create(job)
    return jobs


def test_transitions_of_one_turn_go_in_one_pipeline_each_with_its_own_outcome() -> None:
    async def scenario() -> None:
        store = CoalescingJobStore(CountingRedis(), Keys("t"), ttl_s=60)
        jobs = await _stored(store, 5)
        await store.transition(jobs[0].id, JobStatus.CANCELED)  # alone: straight to Redis, no pipeline
        CountingRedis.pipelines = 0
        outcomes = await asyncio.gather(
            *(store.transition(job.id, JobStatus.RUNNING, started_at=utc_now()) for job in jobs)
        )
        assert outcomes == [False, True, True, True, True]  # the canceled one is refused, alone
        assert CountingRedis.pipelines == 1
        running = await store.get_many(job.id for job in jobs[1:])
        assert {job.status for job in running.values()} == {JobStatus.RUNNING}
        assert all(job.attempts == 1 and job.started_at is not None for job in running.values())

    asyncio.run(scenario())


def test_a_lost_script_cache_is_loaded_again() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = CoalescingJobStore(redis, Keys("t"), ttl_s=60)
        jobs = await _stored(store, 3)
        await redis.script_flush()  # what a Redis restart does
        outcomes = await asyncio.gather(*(store.transition(job.id, JobStatus.RUNNING) for job in jobs))
        assert outcomes == [True, True, True]

    asyncio.run(scenario())


def test_redis_failing_fails_every_call_of_the_pipeline_as_queue_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = CoalescingJobStore(redis, Keys("t"), ttl_s=60)
        jobs = await _stored(store, 3)

        def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise RedisConnectionError("gone")

        monkeypatch.setattr(redis, "pipeline", unreachable)
        outcomes = await asyncio.gather(
            *(store.transition(job.id, JobStatus.RUNNING) for job in jobs), return_exceptions=True
        )
        assert all(isinstance(outcome, QueueUnavailable) for outcome in outcomes)

    asyncio.run(scenario())
