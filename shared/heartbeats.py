"""Which caption workers have their model loaded: a sorted set of worker ids scored by when each beat expires.

Each ready worker beats every ``worker_heartbeat_s``: it writes its details under its own
expiring key and its id, scored with that expiry, into one sorted set. Readers (``/readyz``,
``/metrics``) count or list the ids whose expiry is still ahead with one ``ZCOUNT`` or
``ZRANGE``, never a ``SCAN`` of the keyspace; a worker that dies stops beating and falls out
by score, and the next beat of any worker trims it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis.asyncio import Redis

from shared.keys import Keys


class WorkerHeartbeats:
    """Writes (worker side) and reads (API side) the ready-worker set."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def beat(self, worker_id: str, info: dict[str, Any], ttl_s: float) -> None:
        """Say ``worker_id`` is ready for the next ``ttl_s`` seconds, with ``info`` for /metrics."""
        now_s = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.worker_heartbeat(worker_id), json.dumps(info), px=int(ttl_s * 1000))
            pipe.zadd(self.keys.ready_workers(), {worker_id: now_s + ttl_s})
            # Dead workers' entries go here, on the writers' schedule, so readers stay read-only.
            pipe.zremrangebyscore(self.keys.ready_workers(), "-inf", now_s)
            await pipe.execute()

    async def remove(self, worker_id: str) -> None:
        """Say ``worker_id`` is no longer ready (a graceful shutdown)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.worker_heartbeat(worker_id))
            pipe.zrem(self.keys.ready_workers(), worker_id)
            await pipe.execute()

    async def count_ready(self) -> int:
        """How many workers beat recently enough to count as ready (one ZCOUNT)."""
        count: int = await self.redis.zcount(self.keys.ready_workers(), f"({time.time()}", "+inf")
        return count

    async def read_ready(self) -> list[dict[str, object]]:
        """The details of each ready worker (``worker_id``, ``model``, ``model_load_s``...)."""
        ids = await self.redis.zrangebyscore(self.keys.ready_workers(), f"({time.time()}", "+inf")
        if not ids:
            return []
        names = [self.keys.worker_heartbeat(_text(worker_id)) for worker_id in ids]
        values = await self.redis.mget(names)
        return [json.loads(value) for value in values if value is not None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
