"""Which job events become webhook deliveries, and how one is queued by task name.

The worker (on every status change) and the API (on cancel) both call
:func:`dispatch_webhook`. It takes a ``send_task`` callable (Celery's
``app.send_task``), so this module never imports celery and neither side imports
the other. Delivering, signing and retrying live in ``worker/webhooks.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field

from shared.jobs import FINAL_STATUSES, Job, JobPublic, JobStatus, WebhookState, utc_now
from shared.keys import WEBHOOK_TASK, Keys
from shared.store import JobStore

logger = logging.getLogger(__name__)


class SendTask(Protocol):
    """The part of ``celery.Celery.send_task`` dispatching needs."""

    def __call__(self, name: str, *, args: list[Any], queue: str) -> object: ...


class WebhookDelivery(BaseModel):
    """One event to deliver: the webhook task's argument, and what a scheduled retry stores.

    The body is fixed when the event happens and signed as is on every attempt, so
    each retry carries the same ``webhook_id`` and the same bytes.
    """

    webhook_id: str = Field(description="Standard Webhooks message id; receivers de-duplicate on it.")
    job_id: str
    url: str
    event: str = Field(description="Event type, e.g. job.succeeded.")
    body: str = Field(description="JSON text of the event, exactly as POSTed and signed.")
    attempt: int = Field(1, ge=1, description="Which attempt this is, starting at 1.")

    def next_attempt(self) -> WebhookDelivery:
        """The same event, one attempt later."""
        return self.model_copy(update={"attempt": self.attempt + 1})


def is_delivered(job: Job, status: JobStatus) -> bool:
    """True when the job has a webhook and ``status`` is final or one it asked for."""
    if not job.webhook_url:
        return False
    return status.is_final or str(status) in job.webhook_events


def event_type(status: JobStatus) -> str:
    """The event type of a status change, e.g. ``job.succeeded``."""
    return f"job.{status}"


def is_final_event(event: str) -> bool:
    """True for the event types of final statuses (``job.succeeded`` ...), false for ``job.running``."""
    prefix, _, status = event.partition(".")
    return prefix == "job" and status in {str(final) for final in FINAL_STATUSES}


def webhook_id_for(job_id: str, status: JobStatus) -> str:
    """The event's id: derived, not random, so a status reported twice is one event to the receiver."""
    return f"msg_{job_id}_{status}"


def build_delivery(job: Job, status: JobStatus, now: datetime) -> WebhookDelivery:
    """The first attempt at delivering ``job``'s change to ``status``.

    The body follows the Standard Webhooks payload shape: ``type``, ``timestamp``
    and the job (as ``GET /v1/jobs/{id}`` shows it) under ``data``.
    """
    if job.webhook_url is None:
        raise ValueError(f"job {job.id} has no webhook_url")
    # The delivery record changes after the body is fixed; a stale copy would mislead.
    data = JobPublic.from_job(job).model_copy(update={"webhook": None})
    payload = {"type": event_type(status), "timestamp": now.isoformat(), "data": data.model_dump(mode="json")}
    return WebhookDelivery(
        webhook_id=webhook_id_for(job.id, status),
        job_id=job.id,
        url=job.webhook_url,
        event=event_type(status),
        body=json.dumps(payload, separators=(",", ":")),
        attempt=1,
    )


def enqueue_delivery(send_task: SendTask, keys: Keys, delivery: WebhookDelivery) -> None:
    """Put one delivery attempt on the webhook queue, by task name."""
    send_task(WEBHOOK_TASK, args=[delivery.model_dump(mode="json")], queue=keys.webhook_queue())


async def dispatch_webhook(
    store: JobStore, send_task: SendTask, job: Job, status: JobStatus, *, now: datetime | None = None
) -> WebhookDelivery | None:
    """Queue the webhook for ``job`` having moved to ``status``, if it asked for one.

    ``job`` should be the record after the change; its ``webhook_url`` must already
    have passed :func:`shared.urls.validate_url` at submit. Marks the job's
    ``webhook`` record pending, then enqueues the first attempt. Returns the
    delivery, or None when the job wants no webhook for this status.
    """
    if not is_delivered(job, status):
        return None
    delivery = build_delivery(job, status, now or utc_now())
    pending = WebhookState(status="pending", event=delivery.event, webhook_id=delivery.webhook_id)
    # A non-final event (running) claims the record only while the job is still in
    # that status, so it never hides the outcome of a job that has already ended.
    only_if = None if status.is_final else {status}
    await store.update(job.id, only_if=only_if, webhook=pending)
    # Off the event loop: Celery's publish blocks on the broker.
    await asyncio.to_thread(enqueue_delivery, send_task, store.keys, delivery)
    logger.info(
        "webhook queued", extra={"job_id": job.id, "webhook_id": delivery.webhook_id, "webhook_event": delivery.event}
    )
    return delivery
