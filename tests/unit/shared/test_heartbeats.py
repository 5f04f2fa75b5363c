"""The ready-worker set: beats count until their expiry, dead workers fall out by score, readers never scan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fakeredis.aioredis import FakeRedis

from shared.heartbeats import WorkerHeartbeats
from shared.keys import Keys

KEYS = Keys("captionizer-test")

Scenario = Callable[[WorkerHeartbeats], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        redis = FakeRedis()
        try:
            await scenario(WorkerHeartbeats(redis, KEYS))
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_a_beat_makes_a_worker_ready_with_its_details() -> None:
    async def scenario(beats: WorkerHeartbeats) -> None:
        assert await beats.count_ready() == 0
        await beats.beat("host:1", {"worker_id": "host:1", "model": "embedded"}, ttl_s=30)
        await beats.beat("host:2", {"worker_id": "host:2", "model": "embedded"}, ttl_s=30)
        await beats.beat("host:1", {"worker_id": "host:1", "model": "embedded"}, ttl_s=30)
        assert await beats.count_ready() == 2
        assert sorted(str(info["worker_id"]) for info in await beats.read_ready()) == ["host:1", "host:2"]

    run(scenario)


def test_a_worker_whose_beat_expired_is_not_counted_and_the_next_beat_trims_it() -> None:
    async def scenario(beats: WorkerHeartbeats) -> None:
        # A worker that died: its last beat's expiry is behind us.
        await beats.redis.zadd(KEYS.ready_workers(), {"host:dead": time.time() - 1})
        assert await beats.count_ready() == 0 and await beats.read_ready() == []
        await beats.beat("host:1", {"worker_id": "host:1"}, ttl_s=30)
        assert await beats.redis.zrange(KEYS.ready_workers(), 0, -1) == [b"host:1"]

    run(scenario)


def test_a_worker_that_stops_is_removed_at_once() -> None:
    async def scenario(beats: WorkerHeartbeats) -> None:
        await beats.beat("host:1", {"worker_id": "host:1"}, ttl_s=30)
        await beats.remove("host:1")
        assert await beats.count_ready() == 0
        assert not await beats.redis.exists(KEYS.worker_heartbeat("host:1"))

    run(scenario)


def test_details_that_expired_before_the_set_entry_are_skipped() -> None:
    async def scenario(beats: WorkerHeartbeats) -> None:
        await beats.beat("host:1", {"worker_id": "host:1"}, ttl_s=30)
        await beats.redis.delete(KEYS.worker_heartbeat("host:1"))
        assert await beats.count_ready() == 1 and await beats.read_ready() == []

    run(scenario)
