"""Delivering webhook events: one attempt per call, recorded on the job, with its retry scheduled.

Runs only in the light webhook worker (``celery -A worker worker -Q webhooks``, wired in
:mod:`worker.webhooks.tasks`), which never loads the model, so a slow receiver never holds a
GPU worker. What to deliver and when (retries, each key's share of deliveries) is decided in
:mod:`shared.webhooks.delivery`; the signed POST itself is :mod:`worker.webhooks.requests`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shared.errors import UrlNotAllowed
from shared.intake.urls import validate_url
from shared.jobs.model import WebhookState
from shared.jobs.store import JobStore
from shared.settings import Settings
from shared.webhooks.delivery import SendTask, WebhookDelivery, enqueue_delivery, is_final_event
from shared.webhooks.secrets import WebhookSecrets
from worker.webhooks.requests import AttemptResult, SessionFactory, make_webhook_session, post_delivery, sign_headers
from worker.webhooks.schedule import DeliverySlots, RetrySchedule

logger = logging.getLogger(__name__)

# Each retry's delay is its configured value times a factor in this range, so
# receivers that failed together are not retried in lockstep (AWS "Exponential
# Backoff And Jitter").
_JITTER = (0.8, 1.2)


def delivery_lease_s(settings: Settings) -> float:
    """How long a delivery slot is held at most: one attempt's timeout and a margin (then a dead holder's slot frees)."""
    return settings.webhook_timeout_s + 30


def retry_delay_s(attempt: int, delays_s: Sequence[float], rng: random.Random) -> float | None:
    """Seconds to wait after failed attempt ``attempt`` (1-based), or None to give up."""
    if attempt > len(delays_s):
        return None
    return delays_s[attempt - 1] * rng.uniform(*_JITTER)


def next_state(
    delivery: WebhookDelivery, result: AttemptResult, retry_in_s: float | None, now: datetime
) -> WebhookState:
    """The job's webhook record after this attempt."""
    state = WebhookState(
        event=delivery.event,
        webhook_id=delivery.webhook_id,
        attempts=delivery.attempt,
        last_status_code=result.status_code,
        last_error=result.error,
    )
    if result.is_success:
        return state.model_copy(update={"status": "delivered", "delivered_at": now})
    if result.is_gone:
        return state.model_copy(update={"status": "gone"})
    if result.refused or retry_in_s is None:
        return state.model_copy(update={"status": "failed"})
    next_at = datetime.fromtimestamp(now.timestamp() + retry_in_s, UTC)
    return state.model_copy(update={"status": "retrying", "next_attempt_at": next_at})


def may_take_record(current: WebhookState | None, delivery: WebhookDelivery) -> bool:
    """True when ``delivery`` may write a job's webhook record that another event holds.

    The final event always wins over ``job.running``: the two are delivered
    concurrently, and a running delivery still retrying must not hide the outcome.
    """
    if current is None or current.webhook_id in (None, delivery.webhook_id):
        return True
    return is_final_event(delivery.event) and not is_final_event(current.event or "")


@dataclass
class WebhookDeliverer:
    """Makes one attempt at a delivery, records it on the job and schedules the next.

    Time comes from ``clock`` (epoch seconds) and jitter from ``rng``, so tests
    can check the whole backoff schedule without sleeping.
    """

    settings: Settings
    store: JobStore
    schedule: RetrySchedule
    open_session: SessionFactory = make_webhook_session
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    #: Queues a woken delivery at once (Celery's ``send_task``); None leaves it to the retry mover.
    send_task: SendTask | None = None
    secrets: WebhookSecrets = field(init=False)
    slots: DeliverySlots = field(init=False)

    def __post_init__(self) -> None:
        redis, keys, settings = self.store.redis, self.store.keys, self.settings
        self.secrets = WebhookSecrets(redis, keys, settings.webhook_secret_grace_s)
        lease_s = delivery_lease_s(settings)
        self.slots = DeliverySlots(redis, keys, settings.webhook_max_concurrent_per_key, lease_s=lease_s)

    async def deliver(self, delivery: WebhookDelivery) -> WebhookState | None:
        """Attempt ``delivery`` once; returns the record written (or due) for the job.

        Returns None when the owner's key already holds its share of deliveries in
        progress: the delivery waits, unattempted, in the owner's waiting set until
        one of those ends (:class:`~shared.webhooks.DeliverySlots`), so a slow
        receiver holds at most that many of the webhook worker's threads, and its
        waiting deliveries cost nothing until a slot frees.
        """
        token = secrets.token_hex(8)
        if not await self.slots.take_or_wait(delivery, token, self.clock()):
            logger.info("webhook deferred: its key holds its share", extra=_ids(delivery))
            return None
        try:
            return await self._deliver(delivery)
        finally:
            await self._release(delivery.owner, token)

    async def _release(self, owner: str, token: str) -> None:
        """Give the slot back; the owner's oldest waiting delivery, woken by it, is queued at once."""
        now_s = self.clock()
        if self.send_task is None:  # no queue at hand: the retry mover queues it within a poll
            await self.slots.release(owner, token, now_s)
            return
        # On the schedule under a lease meanwhile: should this worker die before queueing it, the mover will.
        for woken in await self.slots.release(owner, token, now_s, due_s=now_s + self.schedule.lease_s):
            await asyncio.to_thread(enqueue_delivery, self.send_task, self.store.keys, woken)
            await self.schedule.remove_claimed(woken, now_s)

    async def _deliver(self, delivery: WebhookDelivery) -> WebhookState:
        owns_record = await self._mark_delivering(delivery)
        result = await self._attempt(delivery)
        now = datetime.fromtimestamp(self.clock(), UTC)
        retry_in_s = retry_delay_s(delivery.attempt, self.settings.webhook_retry_delays_s, self.rng)
        state = next_state(delivery, result, retry_in_s, now)
        if state.status == "retrying" and state.next_attempt_at is not None:
            # Scheduled before the record is written: a crash between the two leaves
            # a stale record, never a lost retry.
            await self.schedule.add(delivery.next_attempt(), due_s=state.next_attempt_at.timestamp())
        # Checked again: the job's final event may have taken the record while this attempt ran.
        if owns_record and await self._may_write_record(delivery):
            await self.store.update(delivery.job_id, webhook=state)
        # Counted in Redis: this worker serves no /metrics of its own, the API exports the counts.
        await self.store.count_webhook_outcome(state.status)
        _log_attempt(delivery, state)
        return state

    async def _mark_delivering(self, delivery: WebhookDelivery) -> bool:
        """Mark the record delivering; False when it belongs to a later event."""
        job = await self.store.get(delivery.job_id)
        if job is None:
            return False  # expired; the event is still delivered from its own body
        current = job.webhook
        if current is not None and current.webhook_id == delivery.webhook_id:
            base = current
        elif may_take_record(current, delivery):
            base = WebhookState(event=delivery.event, webhook_id=delivery.webhook_id)
        else:
            return False
        await self.store.update(delivery.job_id, webhook=base.model_copy(update={"status": "delivering"}))
        return True

    async def _may_write_record(self, delivery: WebhookDelivery) -> bool:
        job = await self.store.get(delivery.job_id)
        return job is not None and may_take_record(job.webhook, delivery)

    async def _attempt(self, delivery: WebhookDelivery) -> AttemptResult:
        settings = self.settings
        try:
            validate_url(
                delivery.url, allow_private=settings.allow_private_networks, allowed_ports=settings.allowed_ports
            )
        except UrlNotAllowed as exc:
            return AttemptResult(error=f"url_not_allowed: {exc.message}", refused=True)
        # The signature's timestamp is the wall clock: receivers check it against theirs.
        signing = await self.signing_secrets(delivery.owner)
        headers = sign_headers(signing, delivery.webhook_id, datetime.now(UTC), delivery.body)
        async with self.open_session(settings) as session:
            return await post_delivery(session, delivery, headers, settings.webhook_timeout_s)

    async def signing_secrets(self, owner: str) -> list[str]:
        """The owner's secrets (current, then any in grace), then the deployment-wide extra ones."""
        # A delivery queued before deliveries carried their owner is signed with the extra ones only.
        tenant = await self.secrets.signing_secrets(owner) if owner else []
        return [*tenant, *self.settings.webhook_secrets]


def _ids(delivery: WebhookDelivery) -> dict[str, str]:
    return {"job_id": delivery.job_id, "webhook_id": delivery.webhook_id, "webhook_event": delivery.event}


def _log_attempt(delivery: WebhookDelivery, state: WebhookState) -> None:
    level = logging.INFO if state.status in ("delivered", "retrying") else logging.WARNING
    logger.log(
        level,
        "webhook attempt",
        extra={
            "job_id": delivery.job_id,
            "webhook_id": delivery.webhook_id,
            "webhook_event": delivery.event,
            "attempt": delivery.attempt,
            "outcome": state.status,
            "status_code": state.last_status_code,
            "error": state.last_error,
            "next_attempt_at": state.next_attempt_at.isoformat() if state.next_attempt_at else None,
        },
    )
