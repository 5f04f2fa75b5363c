"""Per-key rate limits: a token bucket in Redis, refilled and spent atomically by one Lua script.

Each owner has a bucket of ``rate_limit_burst`` tokens that refills at
``rate_limit_per_minute``; a request spends one. The script reads Redis's own
clock, so every API replica shares one bucket per key without clock skew.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.errors import RateLimited
from shared.keys import Keys
from shared.settings import Settings
from shared.store import map_redis_errors

logger = logging.getLogger(__name__)

# KEYS[1] the bucket (a hash of tokens and ts). ARGV[1] tokens per millisecond,
# ARGV[2] burst, ARGV[3] now in ms ("" = Redis TIME; tests pass a clock).
# Returns {allowed 0/1, ms until a token is available, whole tokens left}.
# Integers only: Redis truncates Lua numbers in replies.
_TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[3])
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
return {allowed, wait_ms, math.floor(tokens)}
"""


@dataclass(frozen=True)
class Decision:
    """The outcome of spending one token."""

    allowed: bool
    #: Milliseconds until the next token (0 when allowed).
    wait_ms: int
    #: Whole tokens left in the bucket after this request.
    remaining: int

    @property
    def retry_after_s(self) -> int:
        """``Retry-After`` in whole seconds, at least 1 (RFC 9110 §10.2.3 takes integers)."""
        return max(1, math.ceil(self.wait_ms / 1000))


class RateLimiter:
    """Token buckets per owner; ``per_minute=0`` turns limiting off."""

    def __init__(self, redis: Redis, keys: Keys, *, per_minute: int, burst: int) -> None:
        self.redis = redis
        self.keys = keys
        self.per_minute = per_minute
        self.burst = burst
        self._spend = redis.register_script(_TOKEN_BUCKET_LUA)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RateLimiter:
        """The limiter configured by ``rate_limit_per_minute`` and ``rate_limit_burst``."""
        return cls(
            redis,
            Keys(settings.key_prefix),
            per_minute=settings.rate_limit_per_minute,
            burst=settings.rate_limit_burst,
        )

    @property
    def is_enabled(self) -> bool:
        """False when ``rate_limit_per_minute`` is 0."""
        return self.per_minute > 0

    async def spend(self, owner: str, *, now_ms: int | None = None) -> Decision:
        """Take one token from ``owner``'s bucket, atomically.

        Raises:
            QueueUnavailable: Redis cannot be reached (fail closed: no unmetered requests).
        """
        args = [repr(self.per_minute / 60_000), str(self.burst), "" if now_ms is None else str(now_ms)]
        with map_redis_errors("the rate limiter (Redis)"):
            allowed, wait_ms, remaining = await self._spend(keys=[self.keys.rate_limit(owner)], args=args)
        return Decision(bool(allowed), int(wait_ms), int(remaining))

    async def check(self, owner: str) -> None:
        """Spend a token for ``owner`` or raise 429.

        Raises:
            RateLimited: the bucket is empty; ``retry_after_s`` says when to come back.
        """
        if not self.is_enabled:
            return
        decision = await self.spend(owner)
        if not decision.allowed:
            logger.info("rate limited", extra={"owner": owner, "retry_after_s": decision.retry_after_s})
            raise RateLimited(
                f"more than {self.per_minute} requests per minute; retry in {decision.retry_after_s} s",
                retry_after_s=decision.retry_after_s,
            )
