"""JobStore: the one door for status changes, atomic under duplicate deliveries."""

from __future__ import annotations

import asyncio
import json

import fakeredis.aioredis
import pytest

from shared.jobs.model import Job, JobErrorInfo, JobStatus, JobTimings, utc_now
from shared.jobs.store import JobStore
from shared.keys import Keys


@pytest.fixture
def job() -> Job:
    return Job(id="job_1", image_url="https://example.com/a.png", prompt="a photo of", max_new_tokens=12)


def test_created_job_round_trips_with_ttl(job: Job) -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = JobStore(redis, Keys("t"), ttl_s=120)
        await store.create(job)
        loaded = await store.get(job.id)
        assert loaded == job
        ttl = await redis.ttl(Keys("t").job(job.id))
        assert 0 < ttl <= 120

    asyncio.run(scenario())


def test_missing_job_is_none() -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=60)
        assert await store.get("nope") is None
        assert not await store.transition("nope", JobStatus.RUNNING)

    asyncio.run(scenario())


def test_happy_path_records_fields_and_counts_attempts(job: Job) -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=60)
        await store.create(job)
        assert await store.transition(job.id, JobStatus.RUNNING, started_at=utc_now())
        done = await store.transition(
            job.id, JobStatus.SUCCEEDED, caption="a cat", timings=JobTimings(generate_s=0.5, batch_size=4)
        )
        assert done
        loaded = await store.get(job.id)
        assert loaded is not None
        assert loaded.status is JobStatus.SUCCEEDED
        assert loaded.caption == "a cat"
        assert loaded.timings.batch_size == 4
        assert loaded.attempts == 1

    asyncio.run(scenario())


def test_late_duplicate_never_overwrites_a_final_result(job: Job) -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=60)
        await store.create(job)
        await store.transition(job.id, JobStatus.RUNNING)
        await store.transition(job.id, JobStatus.SUCCEEDED, caption="first")
        assert not await store.transition(job.id, JobStatus.RUNNING)
        assert not await store.transition(
            job.id, JobStatus.FAILED, error=JobErrorInfo(code="internal_error", message="late")
        )
        loaded = await store.get(job.id)
        assert loaded is not None and loaded.caption == "first" and loaded.error is None

    asyncio.run(scenario())


def test_redelivery_moves_running_to_running_and_counts_it(job: Job) -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=60)
        await store.create(job)
        assert await store.transition(job.id, JobStatus.RUNNING)
        assert await store.transition(job.id, JobStatus.RUNNING)
        loaded = await store.get(job.id)
        assert loaded is not None and loaded.attempts == 2

    asyncio.run(scenario())


def test_canceled_queued_job_cannot_start(job: Job) -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=60)
        await store.create(job)
        assert await store.transition(job.id, JobStatus.CANCELED, from_status=[JobStatus.QUEUED])
        assert not await store.transition(job.id, JobStatus.RUNNING)

    asyncio.run(scenario())


def test_illegal_transition_is_refused_before_redis() -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=60)
        with pytest.raises(ValueError):
            await store.transition("x", JobStatus.RUNNING, from_status=[JobStatus.SUCCEEDED])

    asyncio.run(scenario())


def test_update_never_touches_status(job: Job) -> None:
    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=60)
        await store.create(job)
        with pytest.raises(ValueError):
            await store.update(job.id, status="succeeded")
        assert await store.update(job.id, stage="fetching")
        assert not await store.update(job.id, only_if=[JobStatus.RUNNING], stage="captioning")
        loaded = await store.get(job.id)
        assert loaded is not None and loaded.stage == "fetching" and loaded.status is JobStatus.QUEUED

    asyncio.run(scenario())


def test_only_a_move_to_a_final_status_is_published(job: Job) -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = JobStore(redis, Keys("t"), ttl_s=60)
        await store.create(job)
        pubsub = redis.pubsub()
        await pubsub.subscribe(Keys("t").job_events(job.id))
        await pubsub.get_message(timeout=1)  # the subscribe confirmation
        assert await store.transition(job.id, JobStatus.RUNNING)
        assert await store.transition(job.id, JobStatus.SUCCEEDED)
        # The first message after the subscription is the end: nobody waits for a move to running.
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert message is not None and json.loads(message["data"]) == "succeeded"
        await pubsub.aclose()
        await redis.aclose()

    asyncio.run(scenario())
