"""The webhook worker's Celery side: the delivery task, its per-thread runtime, and the retry mover.

Runs only in the light webhook worker (``celery -A worker worker -Q webhooks``); each task
is one :meth:`worker.webhooks.deliverer.WebhookDeliverer.deliver` call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from celery import Celery, signals
from celery.exceptions import Reject
from redis.asyncio import Redis

from shared.errors import QueueUnavailable
from shared.jobs.store import REDIS_ERRORS, JobStore
from shared.keys import WEBHOOK_TASK, Keys
from shared.redis_packing import pack_with_hiredis
from shared.settings import Settings
from shared.webhooks.delivery import SendTask, WebhookDelivery
from worker.webhooks.deliverer import WebhookDeliverer, delivery_lease_s
from worker.webhooks.schedule import RetryMover, RetrySchedule

logger = logging.getLogger(__name__)

#: What a delivery held back by its key's share (``webhook_max_concurrent_per_key``) reports.
DEFERRED = "deferred"


class _Runtime(threading.local):
    """One event loop and Redis client per worker thread, reused across tasks.

    Thread-local so the same code serves the prefork pool (one thread per child)
    and the threads pool; made lazily, after the fork, never in the parent.
    """

    runner: asyncio.Runner | None = None
    deliverer: WebhookDeliverer | None = None


_runtime = _Runtime()


def _deliverer_for(settings: Settings, send_task: SendTask | None) -> tuple[asyncio.Runner, WebhookDeliverer]:
    if _runtime.runner is None or _runtime.deliverer is None or _runtime.deliverer.settings is not settings:
        runner = asyncio.Runner()
        # The client binds to the loop that first uses it, so it is made inside it.
        redis = runner.run(_make_redis(settings))
        keys = Keys(settings.key_prefix)
        store = JobStore(redis, keys, settings.job_ttl_s)
        deliverer = WebhookDeliverer(settings, store, RetrySchedule(redis, keys), send_task=send_task)
        _runtime.runner, _runtime.deliverer = runner, deliverer
    return _runtime.runner, _runtime.deliverer


async def _make_redis(settings: Settings) -> Redis:
    return pack_with_hiredis(Redis.from_url(settings.redis_url))


def deliver_webhook(settings: Settings, payload: dict[str, Any], send_task: SendTask | None = None) -> str:
    """Body of the Celery task: one attempt at one delivery; returns the outcome."""
    delivery = WebhookDelivery.model_validate(payload)
    runner, deliverer = _deliverer_for(settings, send_task)
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
        # app.send_task queues the delivery a freed slot wakes (WebhookDeliverer._release).
        return deliver_webhook(settings, payload, app.send_task)


def is_consuming(app: Celery, queue: str) -> bool:
    """True when this worker process consumes ``queue`` (``celery worker -Q ...``)."""
    return queue in app.amqp.queues.consume_from


def install_retry_mover(app: Celery, settings: Settings) -> None:
    """Run a :class:`~worker.webhooks.schedule.RetryMover` in each worker that consumes the webhook queue.

    Started on ``worker_ready``, in the worker's main process, once the queues
    from ``-Q`` are known; caption-only workers never start one.
    """
    keys = Keys(settings.key_prefix)
    movers: list[RetryMover] = []

    def _start(sender: Any = None, **_: Any) -> None:
        if is_consuming(app, keys.webhook_queue()):
            mover = RetryMover(
                settings.redis_url, keys, app.send_task,
                slots_limit=settings.webhook_max_concurrent_per_key, slots_lease_s=delivery_lease_s(settings),
            )  # fmt: skip
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
