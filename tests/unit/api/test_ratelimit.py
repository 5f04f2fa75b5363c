"""The per-key token bucket: bursts, refill, isolation between keys, atomicity and Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import fakeredis.aioredis
import pytest
from redis.asyncio import Redis

from api.http.ratelimit import Decision, RateLimiter
from shared.errors import QueueUnavailable, RateLimited
from shared.keys import Keys

KEYS = Keys("captionizer-test")
T0_MS = 1_700_000_000_000

Scenario = Callable[[RateLimiter, Redis], Awaitable[None]]


@pytest.fixture(params=["fakeredis", "redis-server"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which Redis the scenario runs against: fakeredis (with lupa) or a real redis-server."""
    if request.param == "redis-server":
        url: str = request.getfixturevalue("redis_server_url")
        return url
    return "fake"


def run(backend: str, scenario: Scenario, *, per_minute: int = 60, burst: int = 3) -> None:
    """Run ``scenario`` on a clean Redis with a limiter of the given rate."""

    async def main() -> None:
        redis: Redis = fakeredis.aioredis.FakeRedis() if backend == "fake" else Redis.from_url(backend)
        try:
            await redis.flushdb()
            await scenario(RateLimiter(redis, KEYS, per_minute=per_minute, burst=burst), redis)
        finally:
            await redis.flushdb()
            await redis.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(("wait_ms", "retry_after_s"), [(0, 1), (1, 1), (999, 1), (1000, 1), (1001, 2), (59_500, 60)])
def test_retry_after_is_whole_seconds_and_at_least_one(wait_ms: int, retry_after_s: int) -> None:
    assert Decision(allowed=False, wait_ms=wait_ms, remaining=0).retry_after_s == retry_after_s


def test_burst_is_allowed_then_refused(backend: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        decisions = [await limiter.spend("key_a", now_ms=T0_MS) for _ in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert [d.remaining for d in decisions] == [2, 1, 0, 0]
        assert decisions[-1].wait_ms == 1000  # 60 per minute: one token a second

    run(backend, scenario)


def test_bucket_refills_at_the_configured_rate(backend: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        for _ in range(3):
            assert (await limiter.spend("key_a", now_ms=T0_MS)).allowed
        half = await limiter.spend("key_a", now_ms=T0_MS + 500)
        assert not half.allowed and half.wait_ms == 500
        assert (await limiter.spend("key_a", now_ms=T0_MS + 1000)).allowed
        assert not (await limiter.spend("key_a", now_ms=T0_MS + 1000)).allowed

    run(backend, scenario)


def test_refill_never_exceeds_the_burst(backend: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        await limiter.spend("key_a", now_ms=T0_MS)
        hour_later = [await limiter.spend("key_a", now_ms=T0_MS + 3_600_000) for _ in range(4)]
        assert [d.allowed for d in hour_later] == [True, True, True, False]

    run(backend, scenario)


def test_each_key_has_its_own_bucket(backend: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        for _ in range(3):
            await limiter.spend("key_a", now_ms=T0_MS)
        assert not (await limiter.spend("key_a", now_ms=T0_MS)).allowed
        assert (await limiter.spend("key_b", now_ms=T0_MS)).allowed

    run(backend, scenario)


def test_a_clock_going_backwards_grants_nothing(backend: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        for _ in range(3):
            await limiter.spend("key_a", now_ms=T0_MS)
        assert not (await limiter.spend("key_a", now_ms=T0_MS - 60_000)).allowed

    run(backend, scenario)


def test_bucket_expires_once_it_would_be_full_again(backend: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        await limiter.spend("key_a", now_ms=T0_MS)
        ttl_ms = await redis.pttl(KEYS.rate_limit("key_a"))
        assert 3000 < ttl_ms <= 4000  # 3 tokens at 1/s, plus a second of slack

    run(backend, scenario)


def test_concurrent_requests_never_overspend_the_bucket(redis_server_url: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        decisions = await asyncio.gather(*(limiter.spend("key_a", now_ms=T0_MS) for _ in range(50)))
        assert sum(d.allowed for d in decisions) == 10

    run(redis_server_url, scenario, burst=10)


def test_redis_clock_is_used_when_no_clock_is_given(redis_server_url: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        decisions = [await limiter.spend("key_a") for _ in range(4)]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert 0 < decisions[-1].wait_ms <= 1000

    run(redis_server_url, scenario)


def test_check_raises_rate_limited_with_retry_after(backend: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        await limiter.check("key_a")
        with pytest.raises(RateLimited) as caught:
            await limiter.check("key_a")
        assert caught.value.status == 429 and caught.value.code == "rate_limited"
        assert caught.value.extra["retry_after_s"] >= 1

    run(backend, scenario, per_minute=1, burst=1)


def test_zero_rate_disables_limiting_without_touching_redis(backend: str) -> None:
    async def scenario(limiter: RateLimiter, redis: Redis) -> None:
        assert not limiter.is_enabled
        for _ in range(100):
            await limiter.check("key_a")
        assert await redis.exists(KEYS.rate_limit("key_a")) == 0

    run(backend, scenario, per_minute=0)


def test_unreachable_redis_is_queue_unavailable_not_unmetered() -> None:
    async def main() -> None:
        # Port 1 on loopback: nothing listens, the connection is refused at once.
        redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
        try:
            with pytest.raises(QueueUnavailable):
                await RateLimiter(redis, KEYS, per_minute=60, burst=3).check("key_a")
        finally:
            await redis.aclose()

    asyncio.run(main())
