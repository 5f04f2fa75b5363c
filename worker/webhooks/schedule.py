"""Webhook retries waiting their time, and each owner's delivery slots: worker-only scheduling.

Why retries are not Celery countdowns: on the Redis broker, a task whose ETA lies
beyond the visibility timeout is redelivered while it waits (Celery docs, "Redis
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

from redis.asyncio import Redis

from shared.keys import Keys
from shared.webhooks.delivery import SendTask, WebhookDelivery, enqueue_delivery

logger = logging.getLogger(__name__)


# KEYS[1] the schedule. ARGV[1] now, ARGV[2] lease end, ARGV[3] most members to claim.
# Claiming re-scores rather than removes, so a crash before the send loses nothing.
_CLAIM_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""
# KEYS[1] the schedule. ARGV[1] a claimed member, ARGV[2] the lease end it was claimed with.
# Removes it only if still claimed: a worker that has already put the same attempt back
# (a deferral, a redelivered task) gave it a new score, and that entry must stay.
_REMOVE_CLAIMED_LUA = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


class RetrySchedule:
    """The sorted set of webhook retries, scored by due time (epoch seconds)."""

    def __init__(self, redis: Redis, keys: Keys, lease_s: float = 60.0) -> None:
        self.redis = redis
        self.keys = keys
        self.lease_s = lease_s
        self._claim = redis.register_script(_CLAIM_LUA)
        self._remove_claimed = redis.register_script(_REMOVE_CLAIMED_LUA)

    async def add(self, delivery: WebhookDelivery, *, due_s: float) -> None:
        """Schedule ``delivery`` for ``due_s``; the same attempt added twice stays one entry."""
        await self.redis.zadd(self.keys.webhook_schedule(), {delivery.model_dump_json(): due_s})

    async def claim_due(self, now_s: float, limit: int = 100) -> list[WebhookDelivery]:
        """Deliveries due at ``now_s``, leased to this caller for ``lease_s``."""
        members = await self._claim(keys=[self.keys.webhook_schedule()], args=[now_s, now_s + self.lease_s, limit])
        return [WebhookDelivery.model_validate_json(member) for member in members]

    async def remove_claimed(self, delivery: WebhookDelivery, claimed_at_s: float) -> None:
        """Forget a delivery claimed at ``claimed_at_s`` once it is on the queue, unless it was scheduled again since."""
        args: list[str | float] = [delivery.model_dump_json(), claimed_at_s + self.lease_s]
        await self._remove_claimed(keys=[self.keys.webhook_schedule()], args=args)


async def move_due_retries(schedule: RetrySchedule, send_task: SendTask, now_s: float) -> int:
    """Queue every retry due at ``now_s``; returns how many were queued."""
    moved = 0
    while batch := await schedule.claim_due(now_s):
        for delivery in batch:
            enqueue_delivery(send_task, schedule.keys, delivery)
            await schedule.remove_claimed(delivery, now_s)
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


# KEYS[1] the owner's slots. ARGV[1] now, ARGV[2] lease end, ARGV[3] the limit, ARGV[4] this attempt's token.
# Leases, not a counter: a worker killed mid-attempt frees its slot when the lease ends.
_TAKE_SLOT_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
return 1
"""


class DeliverySlots:
    """Each owner's deliveries in progress, at most ``limit`` at once over every webhook worker (0: no limit).

    One key's slow receiver then holds at most ``limit`` of the webhook threads,
    and every other key's deliveries still go out.
    """

    def __init__(self, redis: Redis, keys: Keys, limit: int, *, lease_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.limit = limit
        self.lease_s = lease_s
        self._take = redis.register_script(_TAKE_SLOT_LUA)

    async def take(self, owner: str, token: str, now_s: float) -> bool:
        """Hold one of ``owner``'s slots under ``token``; False when all are held."""
        if self.limit <= 0:
            return True
        args: list[float | int | str] = [now_s, now_s + self.lease_s, self.limit, token]
        return bool(await self._take(keys=[self.keys.webhook_slots(owner)], args=args))

    async def release(self, owner: str, token: str) -> None:
        """Give back the slot held under ``token``."""
        if self.limit > 0:
            await self.redis.zrem(self.keys.webhook_slots(owner), token)
