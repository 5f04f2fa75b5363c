"""The retry schedule: due retries reach the queue once, early ones wait, a lost claim comes back."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis.aioredis

from shared.keys import WEBHOOK_TASK, Keys
from shared.webhooks.delivery import WebhookDelivery
from tests.fakes import scheduled_retries
from worker.webhooks.schedule import DeliverySlots, RetrySchedule, move_due_retries

T0 = 1_700_000_000.0


class Sent:
    """Records what ``send_task`` was asked to queue."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []

    def __call__(self, name: str, *, args: list[Any], queue: str, argsrepr: str | None = None) -> None:
        self.calls.append((name, args[0], queue))


def delivery(job_id: str, attempt: int = 2) -> WebhookDelivery:
    return WebhookDelivery(
        webhook_id=f"msg_{job_id}_succeeded",
        job_id=job_id,
        url="https://x",
        event="job.succeeded",
        body="{}",
        attempt=attempt,
    )


def make_schedule(lease_s: float = 60.0) -> RetrySchedule:
    return RetrySchedule(fakeredis.aioredis.FakeRedis(), Keys("t"), lease_s=lease_s)


def test_only_due_retries_are_queued_on_the_webhook_queue() -> None:
    async def scenario() -> None:
        schedule, sent = make_schedule(), Sent()
        await schedule.add(delivery("a"), due_s=T0)
        await schedule.add(delivery("b"), due_s=T0 + 30)
        assert await move_due_retries(schedule, sent, T0) == 1
        assert sent.calls == [(WEBHOOK_TASK, delivery("a").model_dump(mode="json"), "t-webhooks")]
        assert [d.job_id for d, _ in await scheduled_retries(schedule)] == ["b"]

    asyncio.run(scenario())


def test_the_same_attempt_scheduled_twice_is_one_entry() -> None:
    async def scenario() -> None:
        schedule, sent = make_schedule(), Sent()
        # A redelivered task (acks_late) schedules its retry again.
        await schedule.add(delivery("a"), due_s=T0)
        await schedule.add(delivery("a"), due_s=T0 + 1)
        assert await move_due_retries(schedule, sent, T0 + 1) == 1

    asyncio.run(scenario())


def test_a_claimed_retry_goes_to_one_mover_only() -> None:
    async def scenario() -> None:
        schedule = make_schedule()
        await schedule.add(delivery("a"), due_s=T0)
        first, second = await asyncio.gather(schedule.claim_due(T0), schedule.claim_due(T0))
        assert sorted([len(first), len(second)]) == [0, 1]

    asyncio.run(scenario())


def test_a_claim_never_sent_comes_back_after_its_lease() -> None:
    async def scenario() -> None:
        schedule, sent = make_schedule(lease_s=60), Sent()
        await schedule.add(delivery("a"), due_s=T0)
        # A mover claims it, then dies before sending.
        assert len(await schedule.claim_due(T0)) == 1
        assert await move_due_retries(schedule, sent, T0 + 59) == 0
        assert await move_due_retries(schedule, sent, T0 + 60) == 1
        assert await scheduled_retries(schedule) == []

    asyncio.run(scenario())


def test_many_due_retries_are_all_moved() -> None:
    async def scenario() -> None:
        schedule, sent = make_schedule(), Sent()
        for i in range(250):
            await schedule.add(delivery(f"j{i}"), due_s=T0 - i)
        assert await move_due_retries(schedule, sent, T0) == 250
        assert len({call[1]["job_id"] for call in sent.calls}) == 250

    asyncio.run(scenario())


# --- each key's share of deliveries in progress -------------------------------------------------


def make_slots(limit: int, lease_s: float = 30.0) -> DeliverySlots:
    return DeliverySlots(fakeredis.aioredis.FakeRedis(), Keys("t"), limit, lease_s=lease_s)


def waiting(owner: str, n: int) -> WebhookDelivery:
    return WebhookDelivery(
        webhook_id=f"msg_{owner}_{n}", job_id=f"job_{n}", owner=owner, url="http://r/", event="job.succeeded", body="{}"
    )


async def schedule_members(slots: DeliverySlots) -> list[tuple[str, float]]:
    entries = await slots.redis.zrange(slots.keys.webhook_schedule(), 0, -1, withscores=True)
    return [(WebhookDelivery.model_validate_json(member).webhook_id, score) for member, score in entries]


def test_a_key_holds_at_most_its_limit_and_others_are_apart() -> None:
    async def scenario() -> None:
        slots = make_slots(limit=2)
        taken = [await slots.take_or_wait(waiting("a", n), str(n), T0) for n in (1, 2, 3)]
        assert taken == [True, True, False]
        assert await slots.take_or_wait(waiting("b", 1), "1", T0)
        # The freed slot wakes a's waiting delivery (due now on the schedule) and is free for it.
        assert [d.webhook_id for d in await slots.release("a", "1", T0 + 5)] == ["msg_a_3"]
        assert await schedule_members(slots) == [("msg_a_3", T0 + 5)]
        assert await slots.take_or_wait(waiting("a", 3), "3", T0 + 6)

    asyncio.run(scenario())


def test_waiting_deliveries_wake_one_per_freed_slot_oldest_first_and_cost_nothing_meanwhile() -> None:
    async def scenario() -> None:
        slots = make_slots(limit=1)
        assert await slots.take_or_wait(waiting("a", 0), "hanging", T0)
        for n in range(1, 501):
            assert not await slots.take_or_wait(waiting("a", n), f"t{n}", T0 + n / 1000)
        # Nothing is due while the holder hangs: no poll touches the 500 waiting deliveries.
        assert await slots.wake_due(T0 + 10) == 0
        assert await schedule_members(slots) == []
        woken = await slots.release("a", "hanging", T0 + 20, due_s=T0 + 80)
        assert [d.webhook_id for d in woken] == ["msg_a_1"]
        # On the schedule under a lease: the releasing worker queues it; the mover only if that worker died.
        assert await schedule_members(slots) == [("msg_a_1", T0 + 80)]
        assert await slots.redis.zcard(slots.keys.webhook_waiting("a")) == 499

    asyncio.run(scenario())


def test_the_same_delivery_deferred_twice_waits_once() -> None:
    async def scenario() -> None:
        slots = make_slots(limit=1)
        assert await slots.take_or_wait(waiting("a", 0), "hanging", T0)
        assert not await slots.take_or_wait(waiting("a", 1), "x", T0)
        assert not await slots.take_or_wait(waiting("a", 1), "y", T0 + 1)
        assert await slots.redis.zcard(slots.keys.webhook_waiting("a")) == 1

    asyncio.run(scenario())


def test_a_slot_of_a_worker_that_died_frees_itself_when_its_lease_ends() -> None:
    async def scenario() -> None:
        slots = make_slots(limit=1, lease_s=30)
        assert await slots.take_or_wait(waiting("a", 0), "dead", T0)
        assert not await slots.take_or_wait(waiting("a", 1), "next", T0 + 29)
        # The holder never releases; the mover's look at overdue owners wakes the waiting one after a lease.
        assert await slots.wake_due(T0 + 29 + 29) == 0
        assert await slots.wake_due(T0 + 29 + 30) == 1
        assert await schedule_members(slots) == [("msg_a_1", T0 + 59)]
        assert await slots.redis.zcard(slots.keys.webhook_waiting_owners()) == 0
        assert await slots.take_or_wait(waiting("a", 1), "next", T0 + 60)

    asyncio.run(scenario())


def test_limit_zero_means_no_limit() -> None:
    async def scenario() -> None:
        slots = make_slots(limit=0)
        assert all([await slots.take_or_wait(waiting("a", i), str(i), T0) for i in range(100)])

    asyncio.run(scenario())


def test_an_attempt_scheduled_again_while_being_moved_is_not_lost() -> None:
    async def scenario() -> None:
        schedule = make_schedule()
        await schedule.add(delivery("a"), due_s=T0)
        [claimed] = await schedule.claim_due(T0)
        # A worker takes it from the queue before the mover's removal, and defers it (its key is at its share).
        await schedule.add(claimed, due_s=T0 + 1)
        await schedule.remove_claimed(claimed, T0)
        assert await scheduled_retries(schedule) == [(claimed, T0 + 1)]

    asyncio.run(scenario())
