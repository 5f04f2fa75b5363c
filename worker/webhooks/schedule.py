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
        slots_limit: int = 0,
        slots_lease_s: float = 60.0,
    ) -> None:
        super().__init__(name="webhook-retry-mover", daemon=True)
        self.redis_url = redis_url
        self.keys = keys
        self.send_task = send_task
        self.poll_s = poll_s
        self.clock = clock
        # The owners' delivery slots, to wake deliveries whose slot holders died (DeliverySlots.wake_due).
        self.slots_limit = slots_limit
        self.slots_lease_s = slots_lease_s
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
        slots = DeliverySlots(redis, self.keys, self.slots_limit, lease_s=self.slots_lease_s)
        try:
            while not self._stop_requested.is_set():
                try:
                    # One range read per poll when no owner is overdue: waiting deliveries cost nothing here.
                    await slots.wake_due(self.clock())
                    await move_due_retries(schedule, self.send_task, self.clock())
                except Exception:
                    # Redis or the broker away: the entries stay scheduled; try again next poll.
                    logger.exception("moving webhook retries failed")
                # Stopping waits at most one poll; due times are whole seconds apart anyway.
                await asyncio.sleep(self.poll_s)
        finally:
            await redis.aclose()


# KEYS[1] the owner's slots, KEYS[2] its waiting deliveries, KEYS[3] the owners with waiting deliveries.
# ARGV[1] now, ARGV[2] lease end, ARGV[3] the limit, ARGV[4] this attempt's token, ARGV[5] the delivery
# (JSON), ARGV[6] the owner, ARGV[7] when to look at the owner again at the latest.
# Leases, not a counter: a worker killed mid-attempt frees its slot when the lease ends. Taking a slot and
# joining the waiting set are one step, so a slot freed in between cannot miss this delivery.
_TAKE_OR_WAIT_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
  return 1
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[1], ARGV[5])
redis.call('ZADD', KEYS[3], 'NX', ARGV[7], ARGV[6])
return 0
"""
# KEYS[1] the owner's slots, KEYS[2] its waiting deliveries, KEYS[3] the owners with waiting deliveries,
# KEYS[4] the retry schedule. ARGV[1] now, ARGV[2] the limit (0: none), ARGV[3] most to wake, ARGV[4] the
# owner, ARGV[5] when to look at the owner again, ARGV[6] the token of a slot to give back ('' for none),
# ARGV[7] the score the woken deliveries get on the retry schedule.
# Wakes as many waiting deliveries, oldest first, as there are free slots (at most ARGV[3]), moving them
# onto the retry schedule (so a caller that dies before queueing them loses nothing), and returns them.
_RELEASE_AND_WAKE_LUA = """
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[1], ARGV[6]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local free = tonumber(ARGV[3])
if tonumber(ARGV[2]) > 0 then free = math.min(free, tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])) end
local woken = {}
if free > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], free)
  for i = 1, #popped, 2 do
    redis.call('ZADD', KEYS[4], ARGV[7], popped[i])
    woken[#woken + 1] = popped[i]
  end
end
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[4])
else
  redis.call('ZADD', KEYS[3], 'XX', ARGV[5], ARGV[4])
end
return woken
"""


class DeliverySlots:
    """Each owner's deliveries in progress, at most ``limit`` at once over every webhook worker (0: no limit).

    One key's slow receiver then holds at most ``limit`` of the webhook threads, and every other key's
    deliveries still go out. A delivery that finds its owner's slots full waits in the owner's waiting
    set, costing nothing while it waits: the attempt that frees a slot takes the oldest waiting delivery
    out and queues it (through the retry schedule, under a lease, so a crash loses nothing). So each waiting delivery costs one deferral per slot freed, never
    one per second. Should a slot's holder die instead, its lease ends and :meth:`wake_due` (run by the
    retry mover, in bounded pages) wakes the owner's waiting deliveries after at most one lease.
    """

    def __init__(self, redis: Redis, keys: Keys, limit: int, *, lease_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.limit = limit
        self.lease_s = lease_s
        self._take_or_wait = redis.register_script(_TAKE_OR_WAIT_LUA)
        self._release_and_wake = redis.register_script(_RELEASE_AND_WAKE_LUA)

    async def take_or_wait(self, delivery: WebhookDelivery, token: str, now_s: float) -> bool:
        """Hold one of the owner's slots under ``token``; False when all are held and ``delivery`` now waits."""
        if self.limit <= 0:
            return True
        owner = delivery.owner
        keys = [self.keys.webhook_slots(owner), self.keys.webhook_waiting(owner), self.keys.webhook_waiting_owners()]
        args: list[float | int | str] = [
            now_s, now_s + self.lease_s, self.limit, token, delivery.model_dump_json(), owner, now_s + self.lease_s,
        ]  # fmt: skip
        return bool(await self._take_or_wait(keys=keys, args=args))

    async def release(
        self, owner: str, token: str, now_s: float, *, due_s: float | None = None
    ) -> list[WebhookDelivery]:
        """Give back the slot held under ``token`` and wake the owner's oldest waiting delivery.

        The woken delivery is put on the retry schedule at ``due_s`` (default: now, for the mover to
        queue); a caller that queues it itself passes a lease end, then takes it off with
        :meth:`RetrySchedule.remove_claimed`. Returns the woken deliveries (at most one).
        """
        if self.limit <= 0:
            return []
        return await self._wake(owner, now_s, most=1, token=token, due_s=now_s if due_s is None else due_s)

    async def wake_due(self, now_s: float, page: int = 100) -> int:
        """Wake the waiting deliveries of owners not looked at for a lease (their slots' holders died), a page at a time."""
        if self.limit <= 0:
            return 0
        owners = await self.redis.zrangebyscore(self.keys.webhook_waiting_owners(), "-inf", now_s, start=0, num=page)
        woken = 0
        for raw in owners:
            owner = raw.decode() if isinstance(raw, bytes) else str(raw)
            woken += len(await self._wake(owner, now_s, most=self.limit, token="", due_s=now_s))
        return woken

    async def _wake(self, owner: str, now_s: float, *, most: int, token: str, due_s: float) -> list[WebhookDelivery]:
        keys = [
            self.keys.webhook_slots(owner), self.keys.webhook_waiting(owner),
            self.keys.webhook_waiting_owners(), self.keys.webhook_schedule(),
        ]  # fmt: skip
        args: list[float | int | str] = [now_s, self.limit, most, owner, now_s + self.lease_s, token, due_s]
        woken = await self._release_and_wake(keys=keys, args=args)
        return [WebhookDelivery.model_validate_json(member) for member in woken]
