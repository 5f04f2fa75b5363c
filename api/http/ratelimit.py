"""Per-key rate limits: token buckets in Redis, refilled and spent atomically by one Lua script.

Each owner has two buckets, one per policy: ``submit`` (``rate_limit_burst`` tokens refilled at
``rate_limit_per_minute``) for requests that make or change jobs, and ``read`` (its own
``rate_limit_reads_*``) for reading one's jobs and long-polling them, so polling never spends the
budget of submitting. A request spends one token of its policy. The script reads Redis's own
clock, so every API replica shares one bucket per key without clock skew. Every ``/v1`` answer
advertises the policies and what is left (``RateLimit-Policy`` / ``RateLimit``, IETF
draft-ietf-httpapi-ratelimit-headers-10).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import RateLimited
from shared.jobs.store import map_redis_errors
from shared.keys import Keys
from shared.settings import Settings

logger = logging.getLogger(__name__)

#: Policy of requests that make or change jobs (POST /v1/jobs, cancel, GET /caption).
SUBMIT_POLICY = "submit"
#: Policy of reading one's own jobs (GET /v1/jobs, GET /v1/jobs/{id}, long-polls included).
READ_POLICY = "read"
# Key in the request's scope state where the spent policy leaves its RateLimit header value.
RATE_LIMIT_STATE = "rate_limit_header"

# KEYS[1] the bucket (a hash of tokens and ts). ARGV[1] tokens per millisecond,
# ARGV[2] burst, ARGV[3] now in ms ("" = Redis TIME; tests pass a clock).
# Returns {allowed 0/1, ms until a token is available, whole tokens left, ms until the bucket is full}.
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
return {allowed, wait_ms, math.floor(tokens), math.ceil((burst - tokens) / rate)}
"""


@dataclass(frozen=True)
class Decision:
    """The outcome of spending one token."""

    allowed: bool
    #: Milliseconds until the next token (0 when allowed).
    wait_ms: int
    #: Whole tokens left in the bucket after this request.
    remaining: int
    #: Milliseconds until the bucket is full again.
    full_ms: int = 0

    @property
    def retry_after_s(self) -> int:
        """``Retry-After`` in whole seconds, at least 1 (RFC 9110 §10.2.3 takes integers)."""
        return max(1, math.ceil(self.wait_ms / 1000))


class RateLimiter:
    """Token buckets per owner under one policy ``name``; ``per_minute=0`` turns limiting off."""

    def __init__(self, redis: Redis, keys: Keys, *, per_minute: int, burst: int, name: str = SUBMIT_POLICY) -> None:
        self.redis = redis
        self.keys = keys
        self.per_minute = per_minute
        self.burst = burst
        self.name = name
        self._spend = redis.register_script(_TOKEN_BUCKET_LUA)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RateLimiter:
        """The submit policy: ``rate_limit_per_minute`` and ``rate_limit_burst``."""
        return cls(
            redis,
            Keys(settings.key_prefix),
            per_minute=settings.rate_limit_per_minute,
            burst=settings.rate_limit_burst,
        )

    @classmethod
    def reads_from_settings(cls, redis: Redis, settings: Settings) -> RateLimiter:
        """The read policy: ``rate_limit_reads_per_minute`` and ``rate_limit_reads_burst``."""
        return cls(
            redis,
            Keys(settings.key_prefix),
            per_minute=settings.rate_limit_reads_per_minute,
            burst=settings.rate_limit_reads_burst,
            name=READ_POLICY,
        )

    @property
    def window_s(self) -> int:
        """Seconds an empty bucket takes to fill: the policy's window ``w`` (quota ``q`` = burst)."""
        return max(1, math.ceil(self.burst * 60 / self.per_minute)) if self.per_minute else 0

    @property
    def policy_item(self) -> str:
        """This policy as one member of ``RateLimit-Policy`` (a structured-field list item)."""
        return f'"{self.name}";q={self.burst};w={self.window_s}'

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
        bucket = (
            self.keys.rate_limit(owner) if self.name == SUBMIT_POLICY else self.keys.rate_limit(f"{self.name}:{owner}")
        )
        with map_redis_errors("the rate limiter (Redis)"):
            allowed, wait_ms, remaining, full_ms = await self._spend(keys=[bucket], args=args)
        return Decision(bool(allowed), int(wait_ms), int(remaining), int(full_ms))

    def state_item(self, decision: Decision) -> str:
        """``RateLimit`` for ``decision``: what is left (``r``) and seconds until it resets (``t``)."""
        reset_s = decision.retry_after_s if not decision.allowed else math.ceil(decision.full_ms / 1000)
        return f'"{self.name}";r={decision.remaining};t={reset_s}'

    async def check(self, owner: str, scope_state: dict[str, object] | None = None) -> None:
        """Spend a token for ``owner`` or raise 429; ``scope_state`` (the request's) gets the ``RateLimit`` value.

        Raises:
            RateLimited: the bucket is empty; ``retry_after_s`` says when to come back.
        """
        if not self.is_enabled:
            return
        decision = await self.spend(owner)
        if scope_state is not None:
            scope_state[RATE_LIMIT_STATE] = self.state_item(decision)
        if not decision.allowed:
            logger.info("rate limited", extra={"owner": owner, "retry_after_s": decision.retry_after_s})
            raise RateLimited(
                f"more than {self.per_minute} requests per minute; retry in {decision.retry_after_s} s",
                retry_after_s=decision.retry_after_s,
            )


class RateLimitHeadersMiddleware:
    """Adds ``RateLimit-Policy`` (both policies) and, once a bucket was spent, ``RateLimit`` to ``/v1`` answers.

    Plain ASGI, so 429s and other problems raised in a route carry them too: the limiter leaves the
    ``RateLimit`` value in the request's scope state, which outlives the exception.
    """

    def __init__(self, app: ASGIApp, *, policies: Sequence[RateLimiter]) -> None:
        self.app = app
        self.policy = ", ".join(limiter.policy_item for limiter in policies if limiter.is_enabled)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.policy or not str(scope.get("path", "")).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        state: dict[str, object] = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["RateLimit-Policy"] = self.policy
                if RATE_LIMIT_STATE in state:
                    headers["RateLimit"] = str(state[RATE_LIMIT_STATE])
            await send(message)

        await self.app(scope, receive, send_with_headers)
