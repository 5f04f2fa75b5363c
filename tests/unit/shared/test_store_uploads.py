"""JobStore uploads: stored with the job in one transaction, with their own TTL, read and deleted by the worker."""

from __future__ import annotations

import asyncio

import fakeredis.aioredis

from shared.jobs.model import Job
from shared.jobs.store import JobStore
from shared.keys import Keys


def test_an_upload_is_stored_with_its_job_and_its_own_ttl() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = JobStore(redis, Keys("t"), ttl_s=600)
        await store.create(Job(id="job_1", source="upload"), upload=b"\x89PNG...", upload_ttl_s=120)
        assert await store.read_upload("job_1") == b"\x89PNG..."
        assert 0 < await redis.ttl(Keys("t").upload("job_1")) <= 120
        await store.delete_upload("job_1")
        assert await store.read_upload("job_1") is None
        assert await store.get("job_1") is not None

    asyncio.run(scenario())


def test_a_job_without_upload_stores_no_upload_key() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = JobStore(redis, Keys("t"), ttl_s=600)
        await store.create(Job(id="job_2", image_url="https://example.com/a.png"))
        assert await redis.exists(Keys("t").upload("job_2")) == 0

    asyncio.run(scenario())
