"""How much work waits in the caption queue, and the admission check that refuses jobs beyond ``max_queue_depth``."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.errors import QueueFull
from shared.keys import Keys
from shared.store import map_redis_errors

#: Retry-After of a queue_full answer: roughly how long a worker takes to drain a batch or two.
QUEUE_FULL_RETRY_AFTER_S = 10


async def queue_depth(redis: Redis, keys: Keys) -> int:
    """Caption tasks waiting in Redis (not those a worker already holds)."""
    with map_redis_errors("the task queue (Redis)"):
        # Celery's Redis transport keeps a queue as a list of that name (default priority).
        depth: int = await redis.llen(keys.caption_queue())  # type: ignore[misc]
    return depth


async def check_queue_room(redis: Redis, keys: Keys, max_depth: int) -> None:
    """Raise QueueFull (503 with Retry-After) when ``max_depth`` tasks already wait."""
    depth = await queue_depth(redis, keys)
    if depth >= max_depth:
        raise QueueFull(
            f"{depth} jobs are waiting, the most this service queues; retry later",
            retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
        )
