"""Delivering webhook events: sign with the owner's secrets, POST once, record the attempt, schedule the retry.

Runs only in the light webhook worker (``celery -A worker worker -Q webhooks``),
which never loads the model, so a slow receiver never holds a GPU worker. What to
deliver and when (retries, each key's share of deliveries) is decided in
:mod:`shared.webhooks`; the POST goes through :mod:`worker.egress`'s SSRF guard.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from celery import Celery, signals
from celery.exceptions import Reject
from redis.asyncio import Redis
from standardwebhooks import Webhook

from shared.errors import QueueUnavailable, UrlNotAllowed
from shared.jobs import WebhookState
from shared.keys import WEBHOOK_TASK, Keys
from shared.settings import Settings
from shared.store import REDIS_ERRORS, JobStore
from shared.urls import validate_url
from shared.webhook_secrets import WebhookSecrets
from shared.webhooks import DeliverySlots, RetryMover, RetrySchedule, WebhookDelivery, is_final_event
from worker.egress import make_egress_session

logger = logging.getLogger(__name__)

#: Makes the aiohttp session for one delivery; the egress guard's connect-time SSRF checks apply.
SessionFactory = Callable[[Settings], aiohttp.ClientSession]

#: Sent with every delivery, so receivers can tell our requests apart in their logs.
USER_AGENT = "Captionizer-Webhooks/0.1"
#: What a delivery held back by its key's share (``webhook_max_concurrent_per_key``) reports.
DEFERRED = "deferred"
# A delivery held back by its key's share is queued again this much later (the mover polls each second).
_DEFER_S = 1.0
# Bounded: network errors can carry long messages, and the record is in every GET of the job.
_MAX_ERROR_CHARS = 200
# Each retry's delay is its configured value times a factor in this range, so
# receivers that failed together are not retried in lockstep (AWS "Exponential
# Backoff And Jitter").
_JITTER = (0.8, 1.2)


def sign_headers(secrets: Sequence[str], webhook_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """Standard Webhooks headers for one attempt, signed with every secret.

    Several ``v1,<base64>`` signatures go space-separated in one header, as the
    specification prescribes for secret rotation; a receiver accepts any match.
    """
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
    }
    signatures = [Webhook(secret).sign(webhook_id, timestamp, body) for secret in secrets]
    if signatures:
        headers["webhook-signature"] = " ".join(signatures)
    return headers


def retry_delay_s(attempt: int, delays_s: Sequence[float], rng: random.Random) -> float | None:
    """Seconds to wait after failed attempt ``attempt`` (1-based), or None to give up."""
    if attempt > len(delays_s):
        return None
    return delays_s[attempt - 1] * rng.uniform(*_JITTER)


@dataclass(frozen=True)
class AttemptResult:
    """What one POST came to: a status code, or an error before any answer."""

    status_code: int | None = None
    error: str | None = None
    #: The URL was refused by the SSRF checks; retrying would only be refused again.
    refused: bool = False

    @property
    def is_success(self) -> bool:
        """True for any 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def is_gone(self) -> bool:
        """True for 410 Gone: the receiver asks us to stop."""
        return self.status_code == 410


async def post_delivery(
    session: aiohttp.ClientSession, delivery: WebhookDelivery, headers: dict[str, str], timeout_s: float
) -> AttemptResult:
    """POST the delivery once and report what happened; never raises for network trouble."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        # Redirects are not followed: a receiver's Location would skip the checks
        # its URL passed at submit, and Standard Webhooks senders don't follow them.
        async with session.post(
            delivery.url, data=delivery.body.encode(), headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            return AttemptResult(status_code=response.status, error=None if response.ok else f"HTTP {response.status}")
    except UrlNotAllowed as exc:
        return AttemptResult(error=f"url_not_allowed: {exc.message}", refused=True)
    except TimeoutError:
        return AttemptResult(error=f"timed out after {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        refusal = _find_refusal(exc)
        if refusal is not None:
            return AttemptResult(error=f"url_not_allowed: {refusal.message}", refused=True)
        return AttemptResult(error=f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS])


def _find_refusal(exc: BaseException) -> UrlNotAllowed | None:
    """The SSRF refusal aiohttp may have wrapped (a resolver's error becomes a connector error)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UrlNotAllowed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


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


def make_webhook_session(settings: Settings) -> aiohttp.ClientSession:
    """The egress-guarded session one delivery POSTs through."""
    headers = {"user-agent": USER_AGENT, "accept": "*/*"}
    return make_egress_session(
        settings, headers=headers, timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s)
    )


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
    secrets: WebhookSecrets = field(init=False)
    slots: DeliverySlots = field(init=False)

    def __post_init__(self) -> None:
        redis, keys, settings = self.store.redis, self.store.keys, self.settings
        self.secrets = WebhookSecrets(redis, keys, settings.webhook_secret_grace_s)
        # A slot is held for one attempt at most, so its lease is the attempt's timeout and a margin.
        lease_s = settings.webhook_timeout_s + 30
        self.slots = DeliverySlots(redis, keys, settings.webhook_max_concurrent_per_key, lease_s=lease_s)

    async def deliver(self, delivery: WebhookDelivery) -> WebhookState | None:
        """Attempt ``delivery`` once; returns the record written (or due) for the job.

        Returns None when the owner's key already holds its share of deliveries in
        progress: the delivery goes back to the schedule, unattempted, so a slow
        receiver holds at most that many of the webhook worker's threads.
        """
        token = secrets.token_hex(8)
        if not await self.slots.take(delivery.owner, token, self.clock()):
            await self.schedule.add(delivery, due_s=self.clock() + _DEFER_S)
            logger.info("webhook deferred: its key holds its share", extra=_ids(delivery))
            return None
        try:
            return await self._deliver(delivery)
        finally:
            await self.slots.release(delivery.owner, token)

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


class _Runtime(threading.local):
    """One event loop and Redis client per worker thread, reused across tasks.

    Thread-local so the same code serves the prefork pool (one thread per child)
    and the threads pool; made lazily, after the fork, never in the parent.
    """

    runner: asyncio.Runner | None = None
    deliverer: WebhookDeliverer | None = None


_runtime = _Runtime()


def _deliverer_for(settings: Settings) -> tuple[asyncio.Runner, WebhookDeliverer]:
    if _runtime.runner is None or _runtime.deliverer is None or _runtime.deliverer.settings is not settings:
        runner = asyncio.Runner()
        # The client binds to the loop that first uses it, so it is made inside it.
        redis = runner.run(_make_redis(settings))
        keys = Keys(settings.key_prefix)
        store = JobStore(redis, keys, settings.job_ttl_s)
        _runtime.runner, _runtime.deliverer = runner, WebhookDeliverer(settings, store, RetrySchedule(redis, keys))
    return _runtime.runner, _runtime.deliverer


async def _make_redis(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url)


def deliver_webhook(settings: Settings, payload: dict[str, Any]) -> str:
    """Body of the Celery task: one attempt at one delivery; returns the outcome."""
    delivery = WebhookDelivery.model_validate(payload)
    runner, deliverer = _deliverer_for(settings)
    try:
        state = runner.run(deliverer.deliver(delivery))
        return DEFERRED if state is None else state.status
    except (QueueUnavailable, *REDIS_ERRORS) as exc:
        # Redis away mid-attempt: put the message back rather than ack an attempt whose
        # retry could not be scheduled; the repeat carries the same webhook-id.
        logger.error("webhook store unavailable; requeueing", extra={"job_id": delivery.job_id})
        raise Reject(str(exc), requeue=True) from exc


def register_webhook_task(app: Celery, settings: Settings) -> None:
    """Register the delivery task (``shared.keys.WEBHOOK_TASK``) on a Celery app."""

    # acks_late (from celery_config): a worker killed mid-attempt redelivers it,
    # with the same webhook-id, so the receiver can drop the duplicate.
    @app.task(name=WEBHOOK_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def _deliver(payload: dict[str, Any]) -> str:
        return deliver_webhook(settings, payload)


def is_consuming(app: Celery, queue: str) -> bool:
    """True when this worker process consumes ``queue`` (``celery worker -Q ...``)."""
    return queue in app.amqp.queues.consume_from


def install_retry_mover(app: Celery, settings: Settings) -> None:
    """Run a :class:`~shared.webhooks.RetryMover` in each worker that consumes the webhook queue.

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
