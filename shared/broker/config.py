"""Celery configuration both sides agree on, as plain data (no celery import here).

The API only sends tasks by name (``send_task``) and the workers consume them;
both build their Celery app from :func:`celery_config` so routing, serialisation
and the broker's visibility timeout cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from shared.keys import CAPTION_TASK, WEBHOOK_TASK, Keys
from shared.settings import Settings


def visibility_timeout_s(settings: Settings) -> int:
    """How long Redis waits before redelivering an unacknowledged task.

    It must exceed the longest job (Celery docs, "Redis: visibility timeout"),
    or a slow batch would be delivered twice while still running. It is also how
    long the jobs of a worker killed mid-batch wait before another worker gets them.
    """
    if settings.redelivery_timeout_s is not None:
        return settings.redelivery_timeout_s
    return max(3 * settings.job_time_limit_s, 300)


def _restore_interval_s(timeout_s: int) -> int:
    # kombu sweeps for messages past their visibility timeout every interval x throttle
    # seconds (10 x 10 by default): sweep every tenth of the timeout instead, so a dead
    # worker's jobs come back within 1.1 x redelivery_timeout_s.
    return max(1, min(30, timeout_s // 10))


def restored_within_s(settings: Settings) -> int:
    """How long after a worker took a message kombu has surely put it back, unless acknowledged first.

    The visibility timeout, plus two of kombu's restore sweeps (one to come round, one of slack).
    It holds for live and dead workers alike: kombu restores by age, not by who holds the message.
    """
    timeout_s = visibility_timeout_s(settings)
    return timeout_s + 2 * _restore_interval_s(timeout_s)


def _broker_transport_options(settings: Settings) -> dict[str, Any]:
    timeout_s = visibility_timeout_s(settings)
    return {
        "visibility_timeout": timeout_s,
        "unacked_restore_interval": _restore_interval_s(timeout_s),
        "unacked_restore_throttle": 1,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings (lowercase names) for the API's client and the workers."""
    keys = Keys(settings.key_prefix)
    return {
        "broker_url": settings.redis_url,
        # Job records live in our own store; Celery's result backend is not used.
        "result_backend": None,
        "task_ignore_result": True,
        # JSON only: never pickle what strangers' jobs put on the wire.
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_routes": {
            CAPTION_TASK: {"queue": keys.caption_queue()},
            WEBHOOK_TASK: {"queue": keys.webhook_queue()},
        },
        "task_default_queue": keys.caption_queue(),
        # Acknowledge after the work is done, and re-queue when the worker process
        # dies mid-task, so an accepted job is never lost (at-least-once).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "broker_transport_options": _broker_transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        # Task events (sent, received, started, succeeded...) are what Flower and `celery events` list;
        # they are opt-in: publishing them cost 1 ms of a worker's CPU per single job, a fifth
        # (bench/README.md, "Worker CPU": the Celery main thread at 2.05 against 1.04 ms per job).
        # Flower turns workers' on by itself (its enable_events option); heartbeats are sent either way.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
    }
