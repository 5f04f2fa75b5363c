"""The webhook delivery contract and ONE builder for every event, job or batch: always signed as the owner.

The worker (on every status change) and the API (on cancel, on a batch's end) both
queue events from here. ``send_task`` is Celery's ``app.send_task``, passed in, so
this module never imports celery. Every event is built by :func:`build_event`, which
takes the owner: the webhook worker signs it with that owner's secrets (docs/webhooks.md)
and counts it on that owner's delivery slots; deployment-wide secrets are added alongside.
Delivering one attempt lives in ``worker/webhooks/deliverer.py``; retries waiting their
time in ``worker/webhooks/schedule.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, Field

from shared.jobs.model import FINAL_STATUSES, Job, JobPublic, JobStatus, WebhookState, utc_now
from shared.jobs.store import JobStore
from shared.keys import WEBHOOK_TASK, Keys

logger = logging.getLogger(__name__)


class SendTask(Protocol):
    """The part of ``celery.Celery.send_task`` dispatching needs."""

    def __call__(self, name: str, *, args: list[Any], queue: str, argsrepr: str | None = None) -> object: ...


class WebhookDelivery(BaseModel):
    """One event to deliver: the webhook task's argument, and what a scheduled retry stores.

    The body is fixed when the event happens and signed as is on every attempt, so
    each retry carries the same ``webhook_id`` and the same bytes.
    """

    webhook_id: str = Field(description="Standard Webhooks message id; receivers de-duplicate on it.")
    job_id: str
    owner: str = Field("", description="The job's owner: whose webhook secrets sign the event.")
    url: str
    event: str = Field(description="Event type, e.g. job.succeeded.")
    body: str = Field(description="JSON text of the event, exactly as POSTed and signed.")
    attempt: int = Field(1, ge=1, description="Which attempt this is, starting at 1.")

    def next_attempt(self) -> WebhookDelivery:
        """The same event, one attempt later."""
        return self.model_copy(update={"attempt": self.attempt + 1})


def wants_webhook(job: Job, status: JobStatus) -> bool:
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


def build_event(
    *, subject_id: str, owner: str, url: str, event: str, data: dict[str, Any], now: datetime
) -> WebhookDelivery:
    """The first attempt at delivering ``event`` about ``subject_id`` (a job or a batch) to ``owner``'s ``url``.

    The body follows the Standard Webhooks payload shape: ``type``, ``timestamp`` and the
    subject as the API shows it under ``data``. The id is derived, not random, so an event
    reported twice is one event to the receiver.
    """
    if not owner:
        # Unsigned or signed with the wrong tenant's secret would both be a bug (issue 22).
        raise ValueError(f"webhook event {event} of {subject_id} has no owner to sign it")
    payload = {"type": event, "timestamp": now.isoformat(), "data": data}
    return WebhookDelivery(
        webhook_id=f"msg_{subject_id}_{event.partition('.')[2]}",
        job_id=subject_id,
        owner=owner,
        url=url,
        event=event,
        body=json.dumps(payload, separators=(",", ":")),
        attempt=1,
    )


def build_delivery(job: Job, status: JobStatus, now: datetime) -> WebhookDelivery:
    """The first attempt at delivering ``job``'s change to ``status`` (the job as ``GET /v1/jobs/{id}`` shows it)."""
    if job.webhook_url is None:
        raise ValueError(f"job {job.id} has no webhook_url")
    # The delivery record changes after the body is fixed; a stale copy would mislead.
    data = JobPublic.from_job(job).model_copy(update={"webhook": None})
    return build_event(
        subject_id=job.id,
        owner=job.owner,
        url=job.webhook_url,
        event=event_type(status),
        data=data.model_dump(mode="json"),
        now=now,
    )


def enqueue_delivery(send_task: SendTask, keys: Keys, delivery: WebhookDelivery) -> None:
    """Put one delivery attempt on the webhook queue, by task name.

    ``argsrepr`` is what Celery's own log lines print for the task's arguments; the
    argument itself holds the receiver's URL and the job (its image URL included),
    which may carry tokens, so the logs get the event's id only.
    """
    argsrepr = repr([{"webhook_id": delivery.webhook_id, "attempt": delivery.attempt}])
    send_task(WEBHOOK_TASK, args=[delivery.model_dump(mode="json")], queue=keys.webhook_queue(), argsrepr=argsrepr)


async def dispatch_webhook(
    store: JobStore, send_task: SendTask, job: Job, status: JobStatus, *, now: datetime | None = None
) -> WebhookDelivery | None:
    """Queue the webhook for ``job`` having moved to ``status``, if it wants one; never raises.

    ``job`` should be the record after the change; its ``webhook_url`` must already
    have passed :func:`shared.intake.urls.validate_url` at submit. Marks the job's
    ``webhook`` record pending, then enqueues the first attempt. Returns the
    delivery, or None when the job wants no webhook for this status or queueing failed.
    """
    if not wants_webhook(job, status):
        return None
    try:
        return await _queue_first_attempt(store, send_task, job, status, now or utc_now())
    except Exception:
        # Webhook failures never fail the job (STYLE §4): its status change has happened either way.
        logger.exception("queueing the webhook failed", extra={"job_id": job.id, "status": str(status)})
        return None


async def _queue_first_attempt(
    store: JobStore, send_task: SendTask, job: Job, status: JobStatus, now: datetime
) -> WebhookDelivery:
    delivery = build_delivery(job, status, now)
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
