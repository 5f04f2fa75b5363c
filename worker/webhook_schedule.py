"""Webhook retries waiting for their time, and the thread that queues them when due.

Why not Celery's ``countdown``: on the Redis broker, a task whose ETA lies beyond
the visibility timeout is redelivered while it waits (Celery docs, "Redis
caveats: visibility timeout"), so a 4 h retry would go out several times. Instead
each retry is a member of a Redis sorted set scored by its due time, and a
:class:`RetryMover` thread in every webhook worker's main process moves due ones
onto the webhook queue. No extra process (celery beat) to deploy or keep single.

Several movers may run at once: claiming a member pushes its score a lease into
the future atomically, so only one mover sends it, and a mover that dies after
claiming leaves it to be claimed again when the lease ends (at least once).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from redis.asyncio import Redis

from shared.keys import Keys
from shared.settings import Settings
from shared.webhooks import SendTask, WebhookDelivery, enqueue_delivery

logger = logging.getLogger(__name__)

# KEYS[1] the schedule. ARGV[1] now, ARGV[2] lease end, ARGV[3] most members to claim.
# Claiming re-scores rather than removes, so a crash before the send loses nothing.
_CLAIM_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""


class RetrySchedule:
    """The sorted set of webhook retries, scored by due time (epoch seconds)."""

    def __init__(self, redis: Redis, keys: Keys, lease_s: float = 60.0) -> None:
        self.redis = redis
        self.keys = keys
        self.lease_s = lease_s
        self._claim = redis.register_script(_CLAIM_LUA)

    async def add(self, delivery: WebhookDelivery, *, due_s: float) -> None:
        """Schedule ``delivery`` for ``due_s``; the same attempt added twice stays one entry."""
        await self.redis.zadd(self.keys.webhook_schedule(), {delivery.model_dump_json(): due_s})

    async def claim_due(self, now_s: float, limit: int = 100) -> list[WebhookDelivery]:
        """Deliveries due at ``now_s``, leased to this caller for ``lease_s``."""
        members = await self._claim(keys=[self.keys.webhook_schedule()], args=[now_s, now_s + self.lease_s, limit])
        return [WebhookDelivery.model_validate_json(member) for member in members]

    async def remove(self, delivery: WebhookDelivery) -> None:
        """Forget a delivery once it is on the queue."""
        await self.redis.zrem(self.keys.webhook_schedule(), delivery.model_dump_json())

    async def due_times(self) -> list[tuple[WebhookDelivery, float]]:
        """Every scheduled delivery with its due time, soonest first (for tests and operators)."""
        entries = await self.redis.zrange(self.keys.webhook_schedule(), 0, -1, withscores=True)
        return [(WebhookDelivery.model_validate_json(member), score) for member, score in entries]


async def move_due_retries(schedule: RetrySchedule, send_task: SendTask, now_s: float) -> int:
    """Queue every retry due at ``now_s``; returns how many were queued."""
    moved = 0
    while batch := await schedule.claim_due(now_s):
        for delivery in batch:
            enqueue_delivery(send_task, schedule.keys, delivery)
            await schedule.remove(delivery)
            moved += 1
    if moved:
        logger.info("webhook retries queued", extra={"count": moved})
    return moved


class RetryMover(threading.Thread):
    """Daemon thread that polls the schedule and queues due retries until stopped."""

    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        send_task: SendTask,
        *,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name="webhook-retry-mover", daemon=True)
        self.redis_url = redis_url
        self.keys = keys
        self.send_task = send_task
        self.poll_s = poll_s
        self.clock = clock
        self._stop_requested = threading.Event()

    def run(self) -> None:
        asyncio.run(self._loop())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the loop to end and wait for it (bounded)."""
        self._stop_requested.set()
        self.join(timeout_s)

    async def _loop(self) -> None:
        redis = Redis.from_url(self.redis_url)
        schedule = RetrySchedule(redis, self.keys)
        try:
            while not self._stop_requested.is_set():
                try:
                    await move_due_retries(schedule, self.send_task, self.clock())
                except Exception:
                    # Redis or the broker away: the entries stay scheduled; try again next poll.
                    logger.exception("moving webhook retries failed")
                # Stopping waits at most one poll; due times are whole seconds apart anyway.
                await asyncio.sleep(self.poll_s)
        finally:
            await redis.aclose()


def is_consuming(app: Celery, queue: str) -> bool:
    """True when this worker process consumes ``queue`` (``celery worker -Q ...``)."""
    return queue in app.amqp.queues.consume_from


def install_retry_mover(app: Celery, settings: Settings) -> None:
    """Run a :class:`RetryMover` in each worker that consumes the webhook queue.

    Started on ``worker_ready``, in the worker's main process, once the queues
    from ``-Q`` are known; caption-only workers never start one.
    """
    keys = Keys(settings.key_prefix)
    movers: list[RetryMover] = []

    def _start(sender: Any = None, **_: Any) -> None:
        if is_consuming(app, keys.webhook_queue()):
            mover = RetryMover(settings.redis_url, keys, app.send_task)
            mover.start()
            movers.append(mover)
            # scripts/stack.py waits for this line: the worker now consumes the webhook queue.
            logger.info("webhook retry mover started", extra={"queue": keys.webhook_queue()})

    def _stop(**_: Any) -> None:
        while movers:
            movers.pop().stop()

    # weak=False: the handlers are closures that nothing else keeps alive.
    signals.worker_ready.connect(_start, weak=False)
    signals.worker_shutdown.connect(_stop, weak=False)
