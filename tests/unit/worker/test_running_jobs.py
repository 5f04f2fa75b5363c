"""The running-jobs registry on a real redis-server: holds and releases mirrored in few writes, entries vouching
for their job for a bounded time whether their worker lives or died, nothing lost when a write fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from scripts.processes import free_port
from shared.jobs.store import REDIS_ERRORS
from shared.keys import Keys
from worker.recovery.running_jobs import RunningJobs, read_vouched

KEYS = Keys("rj")
VOUCH_S = 100.0


class Clock:
    """A settable clock (epoch seconds) for entries' scores and the reader's now."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def run(url: str, scenario: Callable[[Redis], Awaitable[None]]) -> None:
    async def main() -> None:
        redis = Redis.from_url(url)
        try:
            await scenario(redis)
        finally:
            await redis.aclose()

    asyncio.run(asyncio.wait_for(main(), timeout=20))


async def vouched(redis: Redis, clock: Clock) -> set[str]:
    return await read_vouched(redis, KEYS, since_s=clock() - VOUCH_S)


def test_holds_and_releases_of_many_deliveries_reach_redis_in_one_write(fresh_redis_url: str) -> None:
    async def scenario(redis: Redis) -> None:
        clock = Clock()
        registry = RunningJobs(redis, KEYS, "host:7:aa", vouch_s=VOUCH_S, clock=clock)
        await redis.config_resetstat()
        with registry.holding(["job_a", "job_b"]):
            registry.hold(["job_b"])  # a second delivery of job_b in the same process
            registry.hold(["job_c"])
            registry.release(["job_c"])
            writer = registry._writer
            assert writer is not None
            await writer  # the background writer, once the flush interval has passed
            stats = await redis.info("commandstats")
            assert stats["cmdstat_exec"]["calls"] == 1  # one transaction for all of the above
            assert await redis.zrange(KEYS.held_jobs("host:7:aa"), 0, -1) == [b"job_a", b"job_b"]
            assert 0 < await redis.ttl(KEYS.held_jobs("host:7:aa")) <= VOUCH_S
            assert await vouched(redis, clock) == {"job_a", "job_b"}
        await registry.flush()
        # job_b is still held by its other delivery.
        assert registry.held == {"job_b"} and await vouched(redis, clock) == {"job_b"}
        registry.release(["job_b"])
        await registry.close()
        assert await redis.exists(KEYS.held_jobs("host:7:aa"), KEYS.job_holders()) == 0

    run(fresh_redis_url, scenario)


def test_an_entry_vouches_for_its_job_for_a_bounded_time_whether_its_worker_lives_or_died(fresh_redis_url: str) -> None:
    async def scenario(redis: Redis) -> None:
        clock = Clock()
        dead = RunningJobs(redis, KEYS, "host:1:dead", vouch_s=VOUCH_S, clock=clock)
        dead.hold(["job_dead"])
        await dead.flush()  # ...and its process is SIGKILLed: nothing more is written
        clock.now += 60
        live = RunningJobs(redis, KEYS, "host:2:live", vouch_s=VOUCH_S, clock=clock)
        live.hold(["job_long", "job_new"])
        await live.flush()
        assert await vouched(redis, clock) == {"job_dead", "job_long", "job_new"}
        # Past the dead worker's vouching time kombu has restored its message: the queue speaks for it now.
        clock.now += 50
        assert await vouched(redis, clock) == {"job_long", "job_new"}
        assert await redis.zrange(KEYS.job_holders(), 0, -1) == [b"host:2:live"]
        # A message held past its own vouching time was restored too, even from a live worker; taking it
        # again (a new hold of an id already held) writes a fresh entry.
        clock.now += 60
        assert await vouched(redis, clock) == set()
        live.hold(["job_long"])
        await live.flush()
        assert await vouched(redis, clock) == {"job_long"}
        await live.close()
        # Still held: the set stays, to vouch until kombu restores the messages.
        assert await redis.exists(KEYS.held_jobs("host:2:live")) == 1

    run(fresh_redis_url, scenario)


def test_changes_a_failed_write_could_not_send_are_sent_by_the_next(fresh_redis_url: str) -> None:
    async def scenario(redis: Redis) -> None:
        clock = Clock()
        down = Redis(port=free_port(), socket_connect_timeout=2)  # nothing listens there
        registry = RunningJobs(down, KEYS, "host:3:cc", vouch_s=VOUCH_S, clock=clock)
        registry.hold(["job_a", "job_b", "job_c"])
        registry.release(["job_c"])
        try:
            await registry.flush()
            raise AssertionError("the write reached a Redis that is not there")
        except REDIS_ERRORS:
            pass
        finally:
            await down.aclose()
        registry.release(["job_b"])  # released meanwhile: it must not come back
        registry.redis = redis
        await registry.flush()
        assert await vouched(redis, clock) == {"job_a"}
        await registry.close()

    run(fresh_redis_url, scenario)
