"""The store keeps job counts by status in the same script as each transition (read by the API's /metrics)."""

from __future__ import annotations

import asyncio

import fakeredis.aioredis

from shared.jobs.model import Job, JobStatus
from shared.jobs.store import JobStore
from shared.keys import Keys


def counts_after(*steps: tuple[str, JobStatus, bool]) -> dict[str, int]:
    """Create jobs a and b, play ``(job_id, status, expected_result)`` transitions, return the counts hash."""

    async def play() -> dict[str, int]:
        redis = fakeredis.aioredis.FakeRedis()
        store = JobStore(redis, Keys("t"), ttl_s=600)
        for job_id in ("a", "b"):
            await store.create(Job(id=job_id, image_url="http://img.test/a.png"))
        for job_id, status, expected in steps:
            assert await store.transition(job_id, status) is expected, (job_id, status)
        raw = await redis.hgetall(Keys("t").job_counts())
        return {name.decode(): int(value) for name, value in raw.items() if int(value)}

    return asyncio.run(play())


def test_each_status_change_moves_one_job_between_current_counts() -> None:
    counts = counts_after(
        ("a", JobStatus.RUNNING, True), ("a", JobStatus.SUCCEEDED, True), ("b", JobStatus.CANCELED, True)
    )
    assert counts == {
        "entered:queued": 2,
        "entered:running": 1,
        "entered:succeeded": 1,
        "entered:canceled": 1,
        "current:succeeded": 1,
        "current:canceled": 1,
    }


def test_a_redelivery_is_counted_as_such_not_as_another_start() -> None:
    counts = counts_after(("a", JobStatus.RUNNING, True), ("a", JobStatus.RUNNING, True))
    assert counts["entered:running"] == 1 and counts["current:running"] == 1 and counts["redelivered"] == 1


def test_a_refused_transition_counts_nothing() -> None:
    counts = counts_after(("a", JobStatus.CANCELED, True), ("a", JobStatus.RUNNING, False))
    assert "entered:running" not in counts and counts["current:queued"] == 1
